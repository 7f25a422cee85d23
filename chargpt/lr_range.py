"""Smith's LR range test: grow the LR exponentially from lr_start to lr_end, smooth the loss, stop once
the smoothed loss exceeds `divergence` x its best, and suggest a maximum LR for the 1cycle policy."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from chargpt.config import LRRangeTestConfig, RunConfig
from chargpt.device import autocast
from chargpt.loop import RunTooLong

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
    max_seconds: float | None = None,
) -> RangeTestResult:
    """max_seconds: stop (RunTooLong) when the sweep would take longer, timed over its iterations 2 to 4."""
    device = next(model.parameters()).device
    started = None
    model.train()
    lrs, losses, smoothed = [], [], []
    avg, best, stopped_early = 0.0, math.inf, False
    for i in tqdm(range(cfg.iterations), desc="lr range test", mininterval=2.0):
        lr = lr_at(cfg, i)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = next_batch()
        with autocast(device, autocast_dtype):
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
        if max_seconds is not None and i in (0, 3):  # loss.item() above synced the device
            if i == 0:
                started = time.perf_counter()
            elif (per_step := (time.perf_counter() - started) / 3) * (cfg.iterations - 4) > max_seconds:
                raise RunTooLong(4, per_step, cfg.iterations - 4, max_seconds)
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


def run_range_test(cfg: RunConfig, device: torch.device, train_split: torch.Tensor,
                   autocast_dtype: torch.dtype | None, max_seconds: float | None = None) -> RangeTestResult:
    """The LR range test of a run: its own model, optimizer and batches, from its seed."""
    from chargpt.batches import BatchSampler
    from chargpt.model import GPT
    from chargpt.optimizers import build_optimizer

    torch.manual_seed(cfg.train.seed)
    model = GPT(cfg.model).to(device)
    if cfg.train.aux_losses:
        model.set_aux_loss_progress(0.0)  # the objective of the run's first steps, which the range test stands for
    optimizer = build_optimizer(model, cfg.optimizer, lr=cfg.lr_range_test.lr_start, momentum=cfg.schedule.momentum_max)
    sampler = BatchSampler(train_split, cfg.model.context, cfg.train.batch_size, cfg.train.seed, device)
    return range_test(model, optimizer, sampler.next, cfg.lr_range_test, autocast_dtype, max_seconds)
