"""What every stage does first: logging, device, threads, seeds, and checking the splits fit the config."""

from __future__ import annotations

import argparse
import logging
import random
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from chargpt.config import ConfigError, RunConfig, TrainConfig
from chargpt.data import SPLITS
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


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def has_native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively on `device` (elsewhere they are emulated, far slower than fp32)."""
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype the run uses (None: plain fp32)."""
    if cfg.precision == "auto":
        return torch.bfloat16 if has_native_bf16(device) else None
    return torch.bfloat16 if cfg.precision == "bf16" else None


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
    from chargpt.checkpoint import CheckpointError
    from chargpt.data import DataError
    from chargpt.tracking import TrackingError

    setup_logging()
    try:
        main()
    except (ConfigError, DataError, CheckpointError, TrackingError, OSError) as e:  # OSError: disk full, …
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


def run_stage_parser(description: str | None) -> argparse.ArgumentParser:
    """The arguments every per-run stage takes: --run NAME [--params FILE]."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run", required=True, help="a run defined under runs: in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    return parser
