"""A short, model-agnostic training loop (after minGPT's trainer). Beside torch it imports only tqdm (the progress
bar) and the error types: nothing of the model, data or tracking.

The loop knows nothing of GPTs. It takes the run's parts (model, optimizer, scheduler, a batch source and a
`step` that turns batches into one optimizer step), a LoopConfig, and hooks for what happens around it
(evaluation, metrics, checkpoints, stop requests, step-dependent settings).
`TrainStep` is the plain step: forward and backward over the micro-batches (gradient accumulation), clipping, the
optimizer step, and a GradScaler for fp16. Compiling is the caller's: it hands TrainStep a torch.compile'd model
(in reduce-overhead mode, torch replays the forward and backward from CUDA graphs).
`LoopState` is everything of the loop's own that a resumed run needs; `StepTimer` the time limit it keeps (the LR
range test keeps it too).
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from chargpt.errors import DivergedError, Interrupted, RunTooLong

Batch = tuple[torch.Tensor, torch.Tensor]


class StepTimer:
    """The time limit: times this session's steps 2 to 4 (the first pays for compilation and allocation) and
    raises RunTooLong after step 4 when the steps left would take longer than max_seconds (None: no limit)."""

    def __init__(self, max_seconds: float | None, total_steps: int, device: torch.device, first_step: int = 0):
        self.max_seconds, self.total_steps, self.device, self.first_step = max_seconds, total_steps, device, first_step
        self.started: float | None = None

    def after(self, done: int) -> None:
        """Call after each step; `done`: the steps completed, this session's and before."""
        if self.max_seconds is None or done not in (self.first_step + 1, self.first_step + 4):
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if done == self.first_step + 1:
            self.started = time.perf_counter()
            return
        per_step, left = (time.perf_counter() - self.started) / 3, self.total_steps - done
        if per_step * left > self.max_seconds:
            raise RunTooLong(done, per_step, left, self.max_seconds)


@dataclass
class StepResult:
    loss: torch.Tensor  # the step's loss (mean over its micro-batches), detached, on the device
    grad_norm: torch.Tensor | None = None  # the global gradient norm before clipping
    clipped: torch.Tensor | None = None  # 1.0 where clipping scaled the gradients down
    skipped: bool = False  # fp16: the GradScaler found inf/NaN gradients and skipped the update
    loss_scale: float | None = None  # fp16: the GradScaler's scale after the step


class TrainStep:
    """One optimizer step: forward and backward over `micro_batches` micro-batches, clip, step.

    Under DistributedDataParallel gradients are all-reduced on the last micro-batch only. With a GradScaler
    (fp16) the loss is scaled before backward and the gradients unscaled before clipping; a step whose
    gradients hold inf/NaN is skipped by the scaler and reported as such."""

    def __init__(
        self,
        forward: torch.nn.Module,
        params: Sequence[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        *,
        grad_clip: float = 0.0,
        amp_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        micro_batches: int = 1,
        scaler: torch.amp.GradScaler | None = None,
        inputs: Callable[[], dict[str, torch.Tensor]] = dict,
    ):
        """amp_context: makes the run's mixed-precision context (chargpt.device.autocast); plain fp32 by default.
        inputs: the forward's keyword inputs beside the batch, this step (e.g. step-dependent loss weights)."""
        self.forward, self.params, self.optimizer, self.grad_clip = forward, list(params), optimizer, grad_clip
        self.amp_context, self.micro_batches, self.scaler, self.inputs = amp_context, micro_batches, scaler, inputs

    def __call__(self, batches: Sequence[Batch]) -> StepResult:
        loss, inputs = None, self.inputs()
        for i, (x, y) in enumerate(batches):
            last = i == len(batches) - 1
            # DDP: all-reduce the gradients once per step, on the last micro-batch
            sync = contextlib.nullcontext() if last or not hasattr(self.forward, "no_sync") else self.forward.no_sync()
            with sync, self.amp_context():
                _, micro_loss = self.forward(x, y, **inputs)
                scaled = micro_loss / len(batches)
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            micro_loss = micro_loss.detach()
            if loss is None:  # a copy where another forward follows: a reduce-overhead replay reuses this memory
                loss = micro_loss if last else micro_loss.clone()
            else:
                loss = loss + micro_loss
        if len(batches) > 1:
            loss = loss / len(batches)  # the mean over the step's micro-batches
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
            clipped = (grad_norm > self.grad_clip).float()
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
            clipped = None
        if not self.scaler:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            return StepResult(loss, grad_norm, clipped)
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        # The scaler halves its scale after a step it skipped, and only then.
        return StepResult(
            loss, grad_norm, clipped, skipped=self.scaler.get_scale() < scale, loss_scale=self.scaler.get_scale()
        )


@dataclass
class TrainParts:
    model: torch.nn.Module  # the plain model (its weights are checked before a save)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    next_batch: Callable[[], Batch]
    step: TrainStep


@dataclass
class LoopConfig:
    total_steps: int
    log_interval: int
    eval_interval: int
    checkpoint_every: int = 0  # 0: no intermediate checkpoints
    # Check the loss for NaN/inf after every step. Free on a CPU; on a GPU it is a host sync per step, so
    # there the check waits for the log interval.
    check_every_step: bool = True
    world_size: int = 1  # data-parallel processes (the loss is averaged over them at each log interval)
    # A finite blow-up is divergence too: an interval's mean train loss this far above the first interval's,
    # or a logged metric above its limit (e.g. a val probe worse than a uniform guess).
    max_loss_rise: float | None = None
    metric_limits: dict[str, float] = field(default_factory=dict)
    # fp16: a loss scale below this means every step overflows, whatever the scale: divergence.
    min_loss_scale: float = 2.0**-8
    # Stop early (RunTooLong) when the steps left would take longer than this, timed over this session's steps
    # 2 to 4 (the first pays for compilation and allocation). None: no limit.
    max_seconds: float | None = None


@dataclass
class LoopState:
    step: int = 0  # steps completed
    tokens: int = 0
    loss_sum: float = 0.0  # train loss summed over the current, unfinished log interval
    loss_count: int = 0
    grad_norm_sum: float = 0.0  # and the gradient norm, and the steps clipping scaled down
    clipped_count: float = 0.0
    skipped_steps: int = 0  # fp16 steps the GradScaler skipped, over the whole run
    first_loss: float | None = None  # the first interval's mean train loss: the blow-up check's reference
    seconds: float = 0.0  # training wall time, summed over resumed sessions


@dataclass
class LoopHooks:
    evaluate: Callable[[], dict[str, float]] = dict  # metrics at eval intervals (e.g. a val probe)
    on_metrics: Callable[[int, dict[str, float]], None] = lambda step, metrics: None
    on_checkpoint: Callable[[LoopState], None] = lambda state: None
    stop_requested: Callable[[], int | None] = lambda: None  # a signal number once a stop was asked for
    before_step: Callable[[int], None] = lambda step: None  # e.g. step-dependent loss weights


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


def scheduled_momentum(group: dict) -> float:
    """The cycled momentum of a param group: AdamW's beta1, or SGD's (and Muon's) momentum."""
    return group["betas"][0] if "betas" in group else group["momentum"]


class IntervalSums:
    """The log interval's train loss, gradient norm and clipped steps, summed on the device and read back (a host
    sync) only at log intervals and checkpoints; the loop's divergence checks on them."""

    def __init__(self, state: LoopState, device: torch.device):
        self.state = state
        self.sums = torch.tensor(
            [state.loss_sum, state.grad_norm_sum, state.clipped_count], dtype=torch.float32, device=device
        )

    def add(self, result: StepResult, done: int, cfg: LoopConfig) -> None:
        state = self.state
        if result.skipped:  # fp16 overflow: no update was made; not divergence unless the scale collapses
            state.skipped_steps += 1
            if result.loss_scale < cfg.min_loss_scale:
                raise DivergedError(
                    done, f"fp16 loss scale collapsed to {result.loss_scale:g} ({state.skipped_steps} steps skipped)"
                )
            return
        self.sums[0] += result.loss
        if result.grad_norm is not None:
            self.sums[1] += result.grad_norm
        if result.clipped is not None:
            self.sums[2] += result.clipped
        state.loss_count += 1
        if cfg.check_every_step and not math.isfinite(value := result.loss.item()):
            raise DivergedError(done, f"loss {value}")

    def interval_metrics(self, done: int, cfg: LoopConfig, last: StepResult, lr: float, momentum: float) -> dict:
        """The interval's means (over every process), then a fresh interval."""
        state, sums = self.state, self.sums
        if cfg.world_size > 1:
            torch.distributed.all_reduce(sums)
            sums /= cfg.world_size
        loss_sum, norm_sum, clipped = sums.tolist()
        count = max(state.loss_count, 1)
        train_loss = loss_sum / count if state.loss_count else math.nan
        if not math.isfinite(train_loss) and state.loss_count:
            raise DivergedError(done, f"mean train loss {train_loss} over the last {state.loss_count} steps")
        metrics = {"train_loss": train_loss, "lr": lr, "momentum": momentum, "grad_norm": norm_sum / count}
        if last.clipped is not None:
            metrics["clipped_fraction"] = clipped / count
        if last.loss_scale is not None:
            metrics |= {"loss_scale": last.loss_scale, "skipped_steps": state.skipped_steps}
        sums.zero_()
        state.loss_count = 0
        return metrics

    def save_into(self, state: LoopState) -> None:
        state.loss_sum, state.grad_norm_sum, state.clipped_count = self.sums.tolist()


def train_loop(
    parts: TrainParts, cfg: LoopConfig, hooks: LoopHooks = LoopHooks(), state: LoopState | None = None
) -> LoopState:
    state = state or LoopState()
    model = parts.model
    device = next(model.parameters()).device
    model.train()
    sums = IntervalSums(state, device)
    timer = StepTimer(cfg.max_seconds, cfg.total_steps, device, first_step=state.step)
    session_start, seconds_before = time.perf_counter(), state.seconds

    def snapshot(step: int) -> LoopState:
        # Never save a state that cannot continue: one update can blow the weights up before any loss shows it.
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise DivergedError(step, "non-finite weights")
        state.step, state.seconds = step, seconds_before + time.perf_counter() - session_start
        sums.save_into(state)
        return state

    bar = tqdm(
        range(state.step, cfg.total_steps), desc="train", mininterval=2.0, initial=state.step, total=cfg.total_steps
    )
    for step in bar:
        hooks.before_step(step)  # called on resume too, so a resumed run matches
        group = parts.optimizer.param_groups[0]
        lr, momentum = group["lr"], scheduled_momentum(group)
        batches = [parts.next_batch() for _ in range(parts.step.micro_batches)]
        result = parts.step(batches)
        state.tokens += sum(y.numel() for _, y in batches) * cfg.world_size
        if step + 1 < cfg.total_steps:  # OneCycleLR refuses a step past total_steps
            parts.scheduler.step()
        done = step + 1
        sums.add(result, done, cfg)
        if done % cfg.log_interval == 0 or done == cfg.total_steps:
            metrics = sums.interval_metrics(done, cfg, result, lr, momentum)
            if done % cfg.eval_interval == 0 or done == cfg.total_steps:
                metrics.update(hooks.evaluate())
                model.train()
            check_blow_up(cfg, state, done, metrics)
            hooks.on_metrics(done, metrics)
            bar.set_postfix(loss_nats=f"{metrics['train_loss']:.3f}", lr=f"{lr:.2e}")  # nats; the probes are bits
        if done == cfg.total_steps:
            break
        timer.after(done)
        if (signum := hooks.stop_requested()) is not None:
            hooks.on_checkpoint(snapshot(done))
            raise Interrupted(signum, done)
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
            hooks.on_checkpoint(snapshot(done))
    return snapshot(cfg.total_steps)


def check_blow_up(cfg: LoopConfig, state: LoopState, step: int, metrics: dict[str, float]) -> None:
    """Divergence that stays finite: clipping can keep a blown-up run's loss finite, and the run useless."""
    loss = metrics["train_loss"]
    if state.first_loss is None and math.isfinite(loss):
        state.first_loss = loss
    elif cfg.max_loss_rise is not None and state.first_loss is not None and loss > state.first_loss + cfg.max_loss_rise:
        raise DivergedError(
            step,
            f"train loss {loss:.4g} is more than {cfg.max_loss_rise:g} above the first "
            f"interval's {state.first_loss:.4g}",
        )
    for name, limit in cfg.metric_limits.items():
        if name in metrics and metrics[name] > limit:
            raise DivergedError(step, f"{name} {metrics[name]:.4g} is above {limit:g}")
