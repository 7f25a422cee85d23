"""Optimizer and LR schedules: the 1cycle policy on torch's own OneCycleLR (three-phase), and the cosine
control on torch's LinearLR + CosineAnnealingLR.

Phases over `total_steps` (torch's three_phase=True):
  1. LR lr_min -> lr_max, momentum momentum_max -> momentum_min   (pct_start of the steps)
  2. LR lr_max -> lr_min, momentum momentum_min -> momentum_max   (pct_start of the steps)
  3. LR lr_min -> lr_min / final_div_factor, momentum held         (the rest: annihilation)
For AdamW, OneCycleLR cycles beta1 as the momentum; with Muon, Muon's momentum follows the same beta1.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, OneCycleLR, SequentialLR

from chargpt.config import OptimizerConfig, ScheduleConfig
from chargpt.muon import MuonWithAdamW
from chargpt.runtime import has_native_bf16


def param_groups(params: list[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    # Decay matrices and embeddings only: biases and LayerNorm gains have no scale to regularise.
    decay = [p for p in params if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in params if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def hidden_matrices(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The weights Muon orthogonalises: 2-D weights of the Linear layers inside the transformer blocks
    (not the embeddings, nor the output head, which Muon's authors leave to AdamW)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise TypeError(f"optimizer muon needs a model with transformer blocks (GPT), got {type(model).__name__}")
    return [m.weight for m in blocks.modules() if isinstance(m, torch.nn.Linear)]


def muon_ns_dtype(cfg: OptimizerConfig, model: torch.nn.Module) -> torch.dtype:
    if cfg.muon_ns_dtype != "auto":
        return torch.bfloat16 if cfg.muon_ns_dtype == "bf16" else torch.float32
    return torch.bfloat16 if has_native_bf16(next(model.parameters()).device) else torch.float32


def build_optimizer(model: torch.nn.Module, cfg: OptimizerConfig, lr: float, momentum: float) -> torch.optim.Optimizer:
    # One fused kernel per step on a GPU; on a CPU the foreach (multi-tensor) path.
    fused = next(model.parameters()).device.type == "cuda"
    kernel = {"fused": True} if fused else {"foreach": True}
    if cfg.name == "muon":
        hidden = hidden_matrices(model)
        hidden_ids = {id(p) for p in hidden}
        rest = param_groups([p for p in model.parameters() if id(p) not in hidden_ids], cfg.weight_decay)
        return MuonWithAdamW(hidden, rest, lr, momentum, cfg.beta2, cfg.weight_decay, muon_ns_dtype(cfg, model), kernel)
    groups = param_groups(list(model.parameters()), cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=cfg.nesterov, **kernel)
    return torch.optim.AdamW(groups, lr=lr, betas=(momentum, cfg.beta2), **kernel)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, lr_max: float, total_steps: int
                    ) -> LRScheduler:
    """The run's schedule over `total_steps` optimizer steps (the caller steps it after every step but the last)."""
    if cfg.name == "onecycle":
        return build_onecycle(optimizer, cfg, lr_max, total_steps)
    return build_cosine(optimizer, cfg, lr_max, total_steps)


def build_cosine(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, lr_max: float, total_steps: int
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
        three_phase=cfg.three_phase,
    )


def current_momentum(optimizer: torch.optim.Optimizer) -> float:
    group = optimizer.param_groups[0]
    return group["betas"][0] if "betas" in group else group["momentum"]
