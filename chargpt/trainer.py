"""A short, model-agnostic training loop (after minGPT's trainer).

It knows nothing of GPTs: it asks `next_batch` for (x, y), calls `model(x, y) -> (_, loss)`, steps the
optimizer and scheduler, and hands metrics to `on_metrics`. Evaluation, logging and checkpointing are
small callables the caller passes in.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from chargpt.schedule import current_momentum

log = logging.getLogger(__name__)


class DivergedError(RuntimeError):
    def __init__(self, step: int, loss: float):
        super().__init__(f"training diverged at step {step}: loss {loss} (LR too high?)")
        self.step, self.loss = step, loss


@dataclass
class LoopConfig:
    total_steps: int
    log_interval: int
    eval_interval: int
    grad_clip: float = 0.0
    autocast_dtype: torch.dtype | None = None


@dataclass
class LoopResult:
    steps: int
    tokens: int
    seconds: float
    last_train_loss: float


def train_loop(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    cfg: LoopConfig,
    evaluate: Callable[[], dict[str, float]],
    on_metrics: Callable[[int, dict[str, float]], None],
) -> LoopResult:
    device_type = next(model.parameters()).device.type
    model.train()
    tokens, loss_sum, loss_count, last_loss = 0, None, 0, math.nan
    started = time.perf_counter()
    bar = tqdm(range(cfg.total_steps), desc="train", mininterval=2.0)
    for step in bar:
        lr, momentum = optimizer.param_groups[0]["lr"], current_momentum(optimizer)
        x, y = next_batch()
        with torch.autocast(device_type, dtype=cfg.autocast_dtype or torch.bfloat16, enabled=cfg.autocast_dtype is not None):
            _, loss = model(x, y)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step + 1 < cfg.total_steps:  # OneCycleLR refuses a step past total_steps
            scheduler.step()
        tokens += y.numel()
        # Accumulate on the device; read it back (a host sync) only at log intervals.
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        loss_count += 1

        last = step + 1 == cfg.total_steps
        if (step + 1) % cfg.log_interval == 0 or last:
            last_loss = loss_sum.item() / loss_count
            if not math.isfinite(last_loss):
                raise DivergedError(step, last_loss)
            metrics = {"train_loss": last_loss, "lr": lr, "momentum": momentum}
            if (step + 1) % cfg.eval_interval == 0 or last:
                metrics.update(evaluate())
                model.train()
            on_metrics(step + 1, metrics)
            bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{lr:.2e}")
            loss_sum, loss_count = None, 0
    return LoopResult(steps=cfg.total_steps, tokens=tokens, seconds=time.perf_counter() - started,
                      last_train_loss=last_loss)
