"""Smith's LR range test: grow the LR exponentially from lr_start to lr_end, smooth the loss, stop once
the smoothed loss exceeds `divergence` x its best, and suggest a maximum LR for the 1cycle policy."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from chargpt.config import LRRangeTestConfig

log = logging.getLogger(__name__)


@dataclass
class RangeTestResult:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggested_lr: float
    lr_at_min_loss: float
    stopped_early: bool
    rule: str


def lr_at(cfg: LRRangeTestConfig, i: int) -> float:
    return cfg.lr_start * (cfg.lr_end / cfg.lr_start) ** (i / (cfg.iterations - 1))


def range_test(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    cfg: LRRangeTestConfig,
    autocast_dtype: torch.dtype | None = None,
) -> RangeTestResult:
    device_type = next(model.parameters()).device.type
    model.train()
    lrs, losses, smoothed = [], [], []
    avg, best, stopped_early = 0.0, math.inf, False
    for i in tqdm(range(cfg.iterations), desc="lr range test", mininterval=2.0):
        lr = lr_at(cfg, i)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = next_batch()
        with torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            _, loss = model(x, y)
        loss_value = loss.item()  # the test's decision needs it every step
        if not math.isfinite(loss_value):
            log.info("loss is %s at lr %.3g: end of the sweep", loss_value, lr)
            stopped_early = True
            break
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        avg = cfg.smoothing * avg + (1 - cfg.smoothing) * loss_value
        value = avg / (1 - cfg.smoothing ** (i + 1))  # bias-corrected EMA
        lrs.append(lr), losses.append(loss_value), smoothed.append(value)
        if i >= cfg.skip_start:
            best = min(best, value)
            if value > cfg.divergence * best:
                log.info("smoothed loss %.3f > %.1f x best %.3f at lr %.3g: stopping", value, cfg.divergence, best, lr)
                stopped_early = True
                break
    usable = range(cfg.skip_start, len(smoothed))
    if not usable:
        raise RuntimeError(f"the LR range test diverged within its first {cfg.skip_start} steps (lr_start "
                           f"{cfg.lr_start} too high?); no LR can be suggested")
    i_min = min(usable, key=smoothed.__getitem__)
    return RangeTestResult(
        lrs=lrs, losses=losses, smoothed=smoothed,
        suggested_lr=lrs[i_min] / cfg.min_loss_divisor, lr_at_min_loss=lrs[i_min], stopped_early=stopped_early,
        rule=f"lr at the minimum of the smoothed loss / {cfg.min_loss_divisor:g}",
    )
