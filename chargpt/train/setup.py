"""A run's device, threads, seeds and precision, from its train section."""

from __future__ import annotations

import random

import numpy as np
import torch

from chargpt.device import autocast_dtype as device_autocast_dtype
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


def device_label(device: torch.device) -> str:
    """How a message names where a run is: 'this CPU' or the GPU's name."""
    return "this CPU" if device.type == "cpu" else torch.cuda.get_device_name(device)
