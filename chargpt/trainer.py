"""A short, model-agnostic training loop (after minGPT's trainer).

It knows nothing of GPTs: it asks `next_batch` for (x, y), calls `model(x, y) -> (_, loss)`, steps the
optimizer and scheduler, and hands metrics to `on_metrics`. With gradient accumulation, one optimizer step
is `accumulation_steps` micro-batches; under DistributedDataParallel (world_size > 1) gradients are
all-reduced on the last micro-batch only, and the logged loss is the mean over all processes. Evaluation,
logging, checkpointing and anything step-dependent outside the optimizer (`before_step`) are small callables
the caller passes in. `LoopState` is everything of the loop's own that a resumed run needs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from tqdm import tqdm

from chargpt.schedule import current_momentum

log = logging.getLogger(__name__)


class DivergedError(RuntimeError):
    def __init__(self, step: int, loss: float):
        super().__init__(f"training diverged at step {step}: loss {loss} (LR too high?); the last good state is kept")
        self.step, self.loss = step, loss

    def __reduce__(self):  # picklable (raised in worker processes, e.g. bench/recipe_sweep.py)
        return type(self), (self.step, self.loss)


class Interrupted(Exception):
    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; rerun to resume")
        self.signum, self.step = signum, step

    def __reduce__(self):
        return type(self), (self.signum, self.step)


@dataclass
class LoopConfig:
    total_steps: int
    log_interval: int
    eval_interval: int
    checkpoint_every: int = 0  # 0: no intermediate checkpoints
    grad_clip: float = 0.0
    autocast_dtype: torch.dtype | None = None
    # Check the loss for NaN/inf after every step. Free on a CPU; on a GPU it is a host sync per step, so
    # there the check waits for the log interval.
    check_every_step: bool = True
    accumulation_steps: int = 1  # micro-batches per optimizer step
    world_size: int = 1  # data-parallel processes (the loss is averaged over them at each log interval)


@dataclass
class LoopState:
    step: int = 0  # steps completed
    tokens: int = 0
    loss_sum: float = 0.0  # train loss summed over the current, unfinished log interval
    loss_count: int = 0
    seconds: float = 0.0  # training wall time, summed over resumed sessions


@contextlib.contextmanager
def stop_on_signals(signums=(signal.SIGTERM, signal.SIGINT)) -> Iterator[Callable[[], int | None]]:
    """Turn SIGTERM/SIGINT into a flag the loop polls between steps, so it can checkpoint and stop cleanly."""
    received: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: received.append(signum)) for s in signums}
    try:
        yield lambda: received[0] if received else None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def train_loop(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    cfg: LoopConfig,
    evaluate: Callable[[], dict[str, float]],
    on_metrics: Callable[[int, dict[str, float]], None],
    state: LoopState | None = None,
    on_checkpoint: Callable[[LoopState], None] = lambda state: None,
    stop_requested: Callable[[], int | None] = lambda: None,
    before_step: Callable[[int], None] = lambda step: None,
) -> LoopState:
    state = state or LoopState()
    device = next(model.parameters()).device
    model.train()
    # Accumulate on the device; read back (a host sync) only at log intervals and checkpoints.
    loss_sum = torch.tensor(state.loss_sum, dtype=torch.float32, device=device)
    session_start, seconds_before = time.perf_counter(), state.seconds

    def snapshot(step: int) -> LoopState:
        # Never save a state that cannot continue: one update can blow the weights up before any loss shows it.
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise DivergedError(step, math.nan)
        state.step, state.loss_sum = step, loss_sum.item()
        state.seconds = seconds_before + time.perf_counter() - session_start
        return state

    bar = tqdm(range(state.step, cfg.total_steps), desc="train", mininterval=2.0, initial=state.step, total=cfg.total_steps)
    for step in bar:
        before_step(step)  # e.g. step-dependent loss weights; called on resume too, so a resumed run matches
        lr, momentum = optimizer.param_groups[0]["lr"], current_momentum(optimizer)
        loss = None
        for micro in range(cfg.accumulation_steps):
            x, y = next_batch()
            last = micro == cfg.accumulation_steps - 1
            # DDP: all-reduce the gradients once per step, on the last micro-batch
            sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
            with sync, torch.autocast(device.type, dtype=cfg.autocast_dtype or torch.bfloat16,
                                      enabled=cfg.autocast_dtype is not None):
                _, micro_loss = model(x, y)
                (micro_loss / cfg.accumulation_steps).backward()
            loss = micro_loss.detach() if loss is None else loss + micro_loss.detach()
            state.tokens += y.numel() * cfg.world_size
        if cfg.accumulation_steps > 1:
            loss = loss / cfg.accumulation_steps  # the mean over the step's micro-batches
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step + 1 < cfg.total_steps:  # OneCycleLR refuses a step past total_steps
            scheduler.step()
        loss_sum += loss
        state.loss_count += 1
        if cfg.check_every_step and not math.isfinite(value := loss.item()):
            raise DivergedError(step + 1, value)

        done = step + 1
        if done % cfg.log_interval == 0 or done == cfg.total_steps:
            if cfg.world_size > 1:
                torch.distributed.all_reduce(loss_sum)
                loss_sum /= cfg.world_size
            train_loss = loss_sum.item() / state.loss_count
            if not math.isfinite(train_loss):
                raise DivergedError(done, train_loss)
            metrics = {"train_loss": train_loss, "lr": lr, "momentum": momentum}
            if done % cfg.eval_interval == 0 or done == cfg.total_steps:
                metrics.update(evaluate())
                model.train()
            on_metrics(done, metrics)
            bar.set_postfix(loss=f"{train_loss:.3f}", lr=f"{lr:.2e}")
            loss_sum.zero_()
            state.loss_count = 0
        if done == cfg.total_steps:
            break
        if (signum := stop_requested()) is not None:
            on_checkpoint(snapshot(done))
            raise Interrupted(signum, done)
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
            on_checkpoint(snapshot(done))
    return snapshot(cfg.total_steps)
