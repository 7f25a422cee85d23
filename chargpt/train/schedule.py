"""LR schedules: the 1cycle policy on torch's own OneCycleLR (three-phase), and the cosine control on torch's
LinearLR + CosineAnnealingLR. The optimizers they drive are built in chargpt.train.optimizers.

Phases over `total_steps` (torch's three_phase=True):
  1. LR lr_min -> lr_max, momentum momentum_max -> momentum_min   (pct_start of the steps)
  2. LR lr_max -> lr_min, momentum momentum_min -> momentum_max   (pct_start of the steps)
  3. LR lr_min -> lr_min / final_div_factor, momentum held         (the rest: annihilation)
For AdamW, OneCycleLR cycles beta1 as the momentum; with Muon, Muon's momentum follows the same beta1.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, OneCycleLR, SequentialLR

from chargpt.train.config import ScheduleConfig


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, lr_max: float, total_steps: int
) -> LRScheduler:
    """The run's schedule over `total_steps` optimizer steps (the caller steps it after every step but the last)."""
    if cfg.name == "onecycle":
        return build_onecycle(optimizer, cfg, lr_max, total_steps)
    return build_cosine(optimizer, cfg, lr_max, total_steps)


def build_cosine(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, lr_max: float, total_steps: int
) -> SequentialLR:
    """Step s < warmup: lr_max * (s + 1) / warmup, reaching lr_max at s = warmup - 1; from there a cosine
    down to lr_min at the last step."""
    for group in optimizer.param_groups:
        group["lr"] = lr_max
        group.pop("initial_lr", None)
    peak = cfg.warmup_steps - 1
    decay = CosineAnnealingLR(optimizer, T_max=total_steps - 1 - peak, eta_min=cfg.lr_min)
    if peak == 0:
        return decay
    warmup = LinearLR(optimizer, start_factor=1 / cfg.warmup_steps, end_factor=1.0, total_iters=peak)
    return SequentialLR(optimizer, [warmup, decay], milestones=[peak])


def build_onecycle(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, lr_max: float, total_steps: int
) -> OneCycleLR:
    return OneCycleLR(
        optimizer,
        max_lr=lr_max,
        total_steps=total_steps,
        pct_start=cfg.pct_start,
        anneal_strategy=cfg.anneal,
        cycle_momentum=True,
        base_momentum=cfg.momentum_min,
        max_momentum=cfg.momentum_max,
        div_factor=lr_max / cfg.lr_min,
        final_div_factor=cfg.final_div_factor,
        three_phase=cfg.three_phase,
    )
