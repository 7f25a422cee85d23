"""The data section of params.yaml: where the corpus comes from, its checksums and its split. Read on its own
by the download and preprocess stages, so that no other setting makes them stale."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from chargpt.errors import ConfigError
from chargpt.io import file_problem
from chargpt.settings import Fraction, PositiveFloat, PositiveInt, Section, format_validation_error

SPLITS = ("train", "val", "test")  # the preprocess stage's outputs, in the corpus's order (data.split's fractions)

ENWIK8_URL = "http://mattmahoney.net/dc/enwik8.zip"


class Checksums(Section):
    """Published digests of a corpus; any field left null is not checked (the observed value is recorded)."""

    archive_size: PositiveInt | None = None
    archive_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    size: PositiveInt | None = None
    md5: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class DataConfig(Section):
    url: str = ENWIK8_URL
    # How to unpack what `url` points at; auto: by the URL's suffix (.zip, .bz2, .gz, anything else raw).
    format: Literal["auto", "zip", "bz2", "gz", "raw"] = "auto"
    member: str | None = "enwik8"  # the zip member to extract; null: the archive must hold exactly one file
    # enwik8's published digests (http://mattmahoney.net/dc/textdata.html) and its zip's as served there
    checksums: Checksums | None = Checksums(
        archive_size=36_445_475,
        archive_sha256="547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc",
        size=100_000_000,
        md5="a1fa5ffddb56f4953e226637dabbb36a",
        sha256="2b49720ec4d78c3c9fabaee6e4179a5e997302b3a70029f30f2d582218c024a8",
    )
    split: tuple[Fraction, Fraction, Fraction] = (0.9, 0.05, 0.05)  # train/val/test by byte offset
    timeout_s: PositiveFloat = 60.0  # per read: a server silent this long is a lost connection (retried)
    retries: Annotated[int, Field(ge=0)] = 3
    # The whole download, retries included: a server that trickles bytes never trips the per-read timeout.
    deadline_s: PositiveFloat = 3600.0
    # The most bytes the download, and the unpacked corpus, may hold where checksums give no size (with sizes
    # given, those sizes are the limits): a decompression bomb or an endless response stops here.
    max_bytes: PositiveInt = 4 << 30

    @model_validator(mode="after")
    def _split_sums_to_one(self) -> DataConfig:
        if not math.isclose(sum(self.split), 1.0, abs_tol=1e-9):
            raise ValueError(f"split: fractions must sum to 1, got {list(self.split)} (sum {sum(self.split)})")
        return self


# The most values params.yaml may hold once its aliases are expanded: the shipped file holds about 1,000; a chain of
# aliases in a few hundred bytes can stand for hundreds of millions, which validating would expand one by one.
MAX_EXPANDED_VALUES = 100_000


class ParamsLoader(yaml.SafeLoader):
    """YAML's safe loader for params.yaml, refusing what costs more than the file's size and what is ambiguous:
    - aliases (`*name`) that expand the document to more than MAX_EXPANDED_VALUES values, or that refer to the node
      they stand in (PyYAML's own dump writes anchors for a value used twice, so a plain alias is taken);
    - a key stated twice in one mapping: PyYAML would keep the last silently, and DVC refuses the whole file."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            check_expansion(node)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_lines: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in first_lines:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r} (first at line {first_lines[key] + 1})", key_node.start_mark,
                )  # fmt: skip
            first_lines[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def check_expansion(root: yaml.Node) -> None:
    """Count the values `root` stands for with every alias expanded, each shared node counted once per use but
    computed once (so a chain of aliases costs its length, not its expansion); refuse past MAX_EXPANDED_VALUES."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise yaml.composer.ComposerError(
                None, None, "found an alias inside the value it names (a recursive structure)", node.start_mark
            )
        open_nodes.add(key)
        if isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            total = 1
        open_nodes.discard(key)
        sizes[key] = total = min(total, MAX_EXPANDED_VALUES + 1)
        if total > MAX_EXPANDED_VALUES:
            raise yaml.composer.ComposerError(
                None, None,
                f"its aliases expand it to more than {MAX_EXPANDED_VALUES:,} values (this one, from here); "
                f"write the values out, or use fewer aliases",
                node.start_mark,
            )  # fmt: skip
        return total

    size(root)


def parse_yaml(text: str) -> object:
    """A params.yaml text, or a value given for one of its keys, parsed by ParamsLoader."""
    return yaml.load(text, Loader=ParamsLoader)


def read_params(path: Path) -> object:
    """params.yaml parsed, or one line saying why it cannot be (the data section and the named runs both read it)."""
    if (problem := file_problem(path)) is not None:
        raise ConfigError(f"{path}: {'file not found' if problem == 'not found' else problem}")
    try:
        return parse_yaml(path.read_text())
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(f"{path}: nested too deeply to read (thousands of levels of lists or mappings)") from None


def load_data_config(path: str | Path = "params.yaml") -> DataConfig:
    """params.yaml's data section alone, validated (runs cannot override it)."""
    path = Path(path)
    raw = read_params(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), dict):
        raise ConfigError(f"{path}: data: expected a mapping (the corpus, its checksums and split)")
    try:
        return DataConfig(**raw["data"])
    except ValidationError as e:
        raise ConfigError(
            f"{path}: {format_validation_error(e, lambda loc: '.'.join(map(str, ('data', *loc))))}"
        ) from None
