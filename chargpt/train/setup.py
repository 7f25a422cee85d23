"""A run's device, threads and seeds, from its train section (its precision: chargpt.device.resolve_amp_dtype)."""

from __future__ import annotations

import random

import numpy as np
import torch

from chargpt.errors import ConfigError
from chargpt.train.config import TrainConfig


def select_device(cfg: TrainConfig, local_rank: int = 0) -> torch.device:
    """The run's device; under torchrun each process on a machine takes the GPU of its local rank."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but torch sees no CUDA device; use 'auto' or 'cpu'")
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if kind == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


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
