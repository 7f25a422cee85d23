"""What the per-run stage scripts share: their arguments, the project's layout (where each stage reads and writes),
and the checks before a run starts. How every stage ends is chargpt.pipeline.harness."""

from __future__ import annotations

import argparse
from pathlib import Path

from chargpt.data.config import SPLITS
from chargpt.errors import ConfigError
from chargpt.io import read_json
from chargpt.pipeline.config import run_name_argument

DATA_DIR = Path("data/processed")


def run_stage_parser(description: str | None) -> argparse.ArgumentParser:
    """The arguments every per-run stage takes: --run NAME [--params FILE]."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run", required=True, type=run_name_argument, help="a run defined under runs: in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    return parser


def split_meta(data_dir: Path = DATA_DIR) -> dict:
    """preprocess's meta.json, with what the per-run stages read of it."""
    return read_json(
        data_dir / "meta.json", *(f"splits.{name}.{key}" for name in SPLITS for key in ("bytes", "sha256"))
    )


def check_fits(run: str, context: int, meta: dict) -> None:
    """Refuse, before any work, a context the training split cannot hold."""
    sizes = {name: meta["splits"][name]["bytes"] for name in SPLITS}
    if sizes["train"] < context + 1:
        raise ConfigError(
            f"run {run!r}: model.context ({context}) needs a train split of at least {context + 1} bytes; "
            f"the corpus gives {sizes}"
        )


def report_dir(run: str) -> Path:
    return Path("reports") / run


def model_path(run: str) -> Path:
    return Path("models") / run / "model.pt"


def checkpoint_dir(run: str) -> Path:
    """The in-progress training state: outside DVC's declared outputs, which DVC deletes before a stage runs."""
    return Path("checkpoints") / run


def resolve_lr_max(run: str, lr_min: float, lr_max: float | str) -> float:
    """schedule.lr_max, or the run's LR range test's suggestion where it is `auto`."""
    if lr_max != "auto":
        return lr_max
    suggested = read_json(report_dir(run) / "lr_range_test.json", "suggested_lr")["suggested_lr"]
    if suggested <= lr_min:
        raise ConfigError(
            f"run {run!r}: schedule.lr_max: auto resolved to the LR range test's {suggested:.3g}, "
            f"not above schedule.lr_min {lr_min}"
        )
    return suggested
