"""Optimizer and the 1cycle policy, built on torch's own OneCycleLR (three-phase).

Phases over `total_steps` (torch's three_phase=True):
  1. LR lr_min -> lr_max, momentum momentum_max -> momentum_min   (pct_start of the steps)
  2. LR lr_max -> lr_min, momentum momentum_min -> momentum_max   (pct_start of the steps)
  3. LR lr_min -> lr_min / final_div_factor, momentum held         (the rest: annihilation)
For AdamW, OneCycleLR cycles beta1 as the momentum.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import OneCycleLR

from chargpt.config import OptimizerConfig, ScheduleConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # Decay matrices and embeddings only: biases and LayerNorm gains have no scale to regularise.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg: OptimizerConfig, lr: float, momentum: float) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=cfg.nesterov, foreach=True)
    return torch.optim.AdamW(groups, lr=lr, betas=(momentum, cfg.beta2), foreach=True)


def build_onecycle(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, lr_max: float, total_steps: int) -> OneCycleLR:
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
        three_phase=True,
    )


def current_momentum(optimizer: torch.optim.Optimizer) -> float:
    group = optimizer.param_groups[0]
    return group["betas"][0] if "betas" in group else group["momentum"]
