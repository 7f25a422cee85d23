"""What every stage script shares: logging, the one-line end for bad input, its arguments, the project's layout
(where each stage reads and writes), and the time limit a run may take on this machine."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from chargpt.data.batches import SPLITS
from chargpt.errors import STAGE_ERRORS, ConfigError
from chargpt.io import read_json

DATA_DIR = Path("data/processed")
MAX_HOURS = "CHARGPT_MAX_HOURS"


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); a known bad-input error ends it with one clear line and exit status 1."""
    setup_logging()
    try:
        main()
    except (*STAGE_ERRORS, OSError) as e:  # OSError: disk full, …
        logging.getLogger("chargpt").error("%s", e)
        sys.exit(1)


def run_stage_parser(description: str | None) -> argparse.ArgumentParser:
    """The arguments every per-run stage takes: --run NAME [--params FILE]."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run", required=True, help="a run defined under runs: in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    return parser


def split_meta(data_dir: Path = DATA_DIR) -> dict:
    return read_json(data_dir / "meta.json")


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
    suggested = read_json(report_dir(run) / "lr_range_test.json")["suggested_lr"]
    if suggested <= lr_min:
        raise ConfigError(
            f"run {run!r}: schedule.lr_max: auto resolved to the LR range test's {suggested:.3g}, "
            f"not above schedule.lr_min {lr_min}"
        )
    return suggested


def time_limit_seconds() -> float | None:
    """How long a stage may train or range-test on this machine: CHARGPT_MAX_HOURS (default 1; 0: no limit)."""
    text = os.environ.get(MAX_HOURS, "1")
    try:
        hours = float(text)
    except ValueError:
        raise ConfigError(f"{MAX_HOURS}={text!r}: expected a number of hours (0: no limit)") from None
    return hours * 3600 if hours > 0 else None


def too_long(stage: str, error: Exception, where: str) -> str:
    """What a user reads when a run would take too long on `where` (the device's name), and how to go on."""
    hours = max(1, math.ceil(error.estimate / 3600 * 1.2))
    return (
        f"{stage} on {where}: {error}; stopped before it. Run it on a GPU, run `dvc repro evaluate@quickstart` "
        f"(the CPU-sized run), or allow it: {MAX_HOURS}={hours} dvc repro ... ({MAX_HOURS}=0: no limit)"
    )
