"""What every section's config shares: a strict frozen pydantic base, the field types, one-line validation errors
that name the key path, and `flatten`. Imports no chargpt module, so that a section's config (chargpt.data.config,
chargpt.model.config, chargpt.train.config, chargpt.evaluation.config) depends on nothing but this."""

from __future__ import annotations

import re
import reprlib
from collections.abc import Callable
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]


class Section(BaseModel):
    # extra="forbid": a typo in params.yaml is an error naming the key, not a silently ignored value.
    model_config = ConfigDict(extra="forbid", frozen=True)


def own_words(e: dict) -> str:
    """A pydantic error's own words: the validator's message without pydantic's "Value error, " prefix."""
    if e["type"] == "value_error" and "error" in e.get("ctx", {}):
        return str(e["ctx"]["error"])
    return e["msg"]


# An option that has left the code reads as an unknown key too: its decision-log line names the commit where it runs,
# and tools/upgrade_files.py lists the lines of a params.yaml that still set one.
UNKNOWN_KEY = "unknown key (typo?); or an option that has left the code? tools/upgrade_files.py names them"


# How pydantic names the member of a union a value failed (constrained-float, literal['auto'], function-after[...],
# a model's class): not a key of params.yaml.
UNION_MEMBER = re.compile(r"[a-z]+(-[a-z]+)+(\[.*\])?|[a-z]+\[.*\]|int|float|bool|str|none|[A-Z]\w*")


# A refused value is quoted by a prefix of it: reprlib stops at these sizes instead of building the whole text.
QUOTE = reprlib.Repr()
QUOTE.maxlevel, QUOTE.maxstring, QUOTE.maxlong, QUOTE.maxother = 2, 60, 40, 60
QUOTE.maxtuple = QUOTE.maxlist = QUOTE.maxarray = QUOTE.maxdict = QUOTE.maxset = QUOTE.maxfrozenset = 4


def quote(value: object) -> str:
    """A short repr of `value` (at most about 100 characters, whatever it holds)."""
    shown = QUOTE.repr(value)  # a few hundred characters at most, before the cut
    return shown if len(shown) <= 100 else shown[:97] + "..."


def format_validation_error(err: ValidationError, key_path: Callable[[tuple], str] | None = None) -> str:
    """One line: each problem as `<key path>: <what is wrong>`; key_path maps a location to where its value is
    written (default: the dotted location). A value no member of a union takes is one problem: each member's words,
    joined by "or"."""
    problems: dict[str, list[str]] = {}
    got: dict[str, str] = {}
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if p != "" and not (isinstance(p, str) and UNION_MEMBER.fullmatch(p)))
        message = own_words(e)
        # A validator names the key it refuses at the start of its message ("lr_min: ...", "train.nproc: ...").
        head, sep, rest = message.partition(": ")
        if sep and " " not in head and head.replace(".", "").replace("_", "").isalnum():
            loc, message = (*loc, *head.split(".")), rest
        path = key_path(loc) if key_path else ".".join(map(str, loc))
        if e["type"] == "extra_forbidden":
            message = UNKNOWN_KEY
        elif e["type"] not in ("value_error", "assertion_error", "missing") and "input" in e:
            got[path] = f" (got {quote(e['input'])})"  # (a missing key's "input" is the whole mapping: not shown)
        problems.setdefault(path, []).append(message)
    return "; ".join(
        f"{path}: {' or '.join(dict.fromkeys(words))}{got.get(path, '')}" for path, words in problems.items()
    )


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}: a config as key paths (MLflow params, config differences)."""
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
