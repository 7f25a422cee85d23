"""What every stage does first: logging, device, threads, seeds, and checking the splits fit the config."""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from chargpt.config import RunConfig, TrainConfig
from chargpt.batches import SPLITS
from chargpt.device import autocast_dtype as device_autocast_dtype
from chargpt.errors import STAGE_ERRORS, ConfigError
from chargpt.io import read_json

DATA_DIR = Path("data/processed")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def select_device(cfg: TrainConfig, local_rank: int = 0) -> torch.device:
    """The run's device; under torchrun each process on a machine takes the GPU of its local rank."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but torch sees no CUDA device; use 'auto' or 'cpu'")
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if kind == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype the run uses on `device` (None: plain fp32); see chargpt.device."""
    return device_autocast_dtype(cfg.precision, device)


def prepare(cfg: TrainConfig, local_rank: int = 0) -> torch.device:
    """Device, thread count and every RNG seeded from the run's seed."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = select_device(cfg, local_rank)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    return device


def split_meta(data_dir: Path = DATA_DIR) -> dict:
    return read_json(data_dir / "meta.json")


def check_fits(cfg: RunConfig, meta: dict) -> None:
    """Refuse, before any work, a context the training split cannot hold."""
    sizes = {name: meta["splits"][name]["bytes"] for name in SPLITS}
    if sizes["train"] < cfg.model.context + 1:
        raise ConfigError(f"run {cfg.name!r}: model.context ({cfg.model.context}) needs a train split of at least "
                          f"{cfg.model.context + 1} bytes; the corpus gives {sizes}")


def report_dir(run: str) -> Path:
    return Path("reports") / run


def model_path(run: str) -> Path:
    return Path("models") / run / "model.pt"


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); a known bad-input error ends it with one clear line and exit status 1."""
    setup_logging()
    try:
        main()
    except (*STAGE_ERRORS, OSError) as e:  # OSError: disk full, …
        logging.getLogger("chargpt").error("%s", e)
        sys.exit(1)


def checkpoint_dir(run: str) -> Path:
    """The in-progress training state: outside DVC's declared outputs, which DVC deletes before a stage runs."""
    return Path("checkpoints") / run


def resolve_lr_max(cfg: RunConfig) -> float:
    """schedule.lr_max, or the LR range test's suggestion where it is `auto`."""
    if cfg.schedule.lr_max != "auto":
        return cfg.schedule.lr_max
    suggested = read_json(report_dir(cfg.name) / "lr_range_test.json")["suggested_lr"]
    if suggested <= cfg.schedule.lr_min:
        raise ConfigError(f"run {cfg.name!r}: schedule.lr_max: auto resolved to the LR range test's {suggested:.3g}, "
                          f"not above schedule.lr_min {cfg.schedule.lr_min}")
    return suggested


MAX_HOURS = "CHARGPT_MAX_HOURS"


def time_limit_seconds() -> float | None:
    """How long a stage may train or range-test on this machine: CHARGPT_MAX_HOURS (default 1; 0: no limit)."""
    text = os.environ.get(MAX_HOURS, "1")
    try:
        hours = float(text)
    except ValueError:
        raise ConfigError(f"{MAX_HOURS}={text!r}: expected a number of hours (0: no limit)") from None
    return hours * 3600 if hours > 0 else None


def too_long(stage: str, error: Exception, device: torch.device) -> str:
    """What a user reads when a run would take too long here, and how to go on."""
    where = "this CPU" if device.type == "cpu" else torch.cuda.get_device_name(device)
    hours = max(1, math.ceil(error.estimate / 3600 * 1.2))
    return (f"{stage} on {where}: {error}; stopped before it. Run it on a GPU, run `dvc repro evaluate@quickstart` "
            f"(the CPU-sized run), or allow it: {MAX_HOURS}={hours} dvc repro ... ({MAX_HOURS}=0: no limit)")


def run_stage_parser(description: str | None) -> argparse.ArgumentParser:
    """The arguments every per-run stage takes: --run NAME [--params FILE]."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run", required=True, help="a run defined under runs: in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    return parser
