"""Files an older chargpt wrote, made readable by this one.

The recipe search's options that no named run uses have left the code (docs/results.md's decision log: what each
measured, and the last commit where it runs). Model files, training states and params.yaml files written before hold
them, switched off; this version refuses them as unknown keys. This script:

- writes a copy of a model file or a training state (`.pt`) without those options, where each is off: the same
  weights, the same model (chargpt loads the copy, and resumes a state from it);
- lists, for a params.yaml, the lines to delete (it is your file: its comments and layout stay yours).

An option switched on is refused: this version cannot build that model or run that recipe, and the commit named
runs it.

    python tools/upgrade_files.py OLD.pt NEW.pt [--force]    # a model file or a training state
    python tools/upgrade_files.py params.yaml                # the lines to delete; exit status 1 where any
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's chargpt, whatever the environment installed

from chargpt.data.config import ParamsLoader  # noqa: E402
from chargpt.errors import STAGE_ERRORS, ConfigError  # noqa: E402
from chargpt.io import atomic_open, check_output, file_problem  # noqa: E402
from chargpt.train.checkpoint import FORMAT_VERSION, load_file, stored_model_config  # noqa: E402

# Each option that has left the code, by section: the value that meant off, and the last commit where it runs.
RETIRED: dict[str, dict[str, tuple[object, str]]] = {
    "model": {"activation": ("relu", "65844c6"), "qk_norm": (False, "65844c6"), "zero_init": (False, "65844c6"),
              "logit_softcap": (None, "65844c6"), "smear": (False, "65844c6"), "bigram": (False, "65844c6"),
              "conv": ("none", "bc3b58b"), "key_offset": (False, "bc3b58b"), "token_shift": (False, "ad421a2")},
    "optimizer": {"embedding_lr_scale": (1.0, "d49c848"), "head_lr_scale": (1.0, "d49c848"),
                  "scalar_lr_scale": (1.0, "d49c848"), "muon_momentum_warmup_steps": (0, "d49c848"),
                  "muon_momentum_warmup_start": (0.85, "d49c848"), "cautious_weight_decay": (False, "bc3b58b")},
    "train": {"batch_size_warmup": (None, "d49c848"), "ema_decay": (None, "d49c848")},
}  # fmt: skip


def retired_in(config: dict) -> tuple[list[tuple[str, str]], list[str]]:
    """A stored config's retired options (sections of dicts): ([(section, key) off], ["section.key: value, ..." on])."""
    off, on = [], []
    for section, options in RETIRED.items():
        values = config.get(section)
        for key in values if isinstance(values, dict) else ():
            if key in options:
                meant_off, commit = options[key]
                if values[key] == meant_off:
                    off.append((section, key))
                else:
                    on.append(f"{section}.{key}: {values[key]!r} (it runs at commit {commit})")
    return off, on


def upgrade_state(old: Path, new: Path, force: bool) -> str:
    """Write `new`: the model file or training state `old` without its retired options, each off. What was done."""
    check_output(new, force, inputs=[old])
    state = load_file(old, "model file or training state")
    if not isinstance(state, dict) or not (state.get("kind") == "training_state" or
                                           state.get("format_version") == FORMAT_VERSION):  # fmt: skip
        raise ConfigError(f"{old}: not a model file or training state chargpt wrote")
    config = state.get("config")
    if not isinstance(config, dict):
        raise ConfigError(f"{old}: holds no config; not a file chargpt wrote")
    off, on = retired_in(config)
    if on:
        raise ConfigError(f"{old}: turns on {'; '.join(on)}, which this version no longer builds: use that commit")
    if not off:
        return f"{old}: holds no retired option; chargpt reads it as it is (nothing written)"
    for section, key in off:
        del config[section][key]
    if state.get("kind") != "training_state":
        stored_model_config(old, state)  # the model it now holds is one this version builds
    with atomic_open(new, "wb") as f:
        torch.save(state, f)
    return f"{new}: {old} without {', '.join(f'{s}.{k}' for s, k in off)} (each off)"


def params_lines(path: Path) -> list[str]:
    """For each retired option that params.yaml `path` sets: `path:line: key path: value`, and what to do."""
    if (problem := file_problem(path)) is not None:
        raise ConfigError(f"{path}: {problem}")
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=ParamsLoader)
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    found: list[str] = []

    def walk(node: yaml.Node, keys: tuple) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            options = RETIRED.get(keys[-1] if keys else "", {})
            if key in options:
                meant_off, commit = options[key]
                value = yaml.load(yaml.serialize(value_node), Loader=yaml.SafeLoader)
                where = f"{path}:{key_node.start_mark.line + 1}: {'.'.join(map(str, (*keys, key)))}: {value!r}"
                if value == meant_off:
                    found.append(f"{where}: delete this line")
                else:
                    found.append(f"{where}: on, which this version no longer runs (it runs at commit {commit})")
            walk(value_node, (*keys, key))

    walk(root, ())
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", type=Path, help="a model file, a training state or a params.yaml")
    parser.add_argument("new", type=Path, nargs="?", help="where the upgraded model file or training state goes")
    parser.add_argument("--force", action="store_true", help="replace NEW where it exists")
    args = parser.parse_args(argv)
    try:
        if args.old.suffix in (".yaml", ".yml"):
            lines = params_lines(args.old)
            print("\n".join(lines) if lines else f"{args.old}: sets no retired option")
            return 1 if lines else 0
        if args.new is None:
            parser.error("a model file or a training state needs NEW, the path of the upgraded copy")
        print(upgrade_state(args.old, args.new, args.force))
        return 0
    except STAGE_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
