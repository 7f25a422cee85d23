"""Smith's LR range test, two ways (lr_range_test.method):

- exponential_loss: grow the LR exponentially from lr_start to lr_end, smooth the training loss, stop once it exceeds
  `divergence` x its best, and suggest a maximum LR: the LR at the smoothed loss's minimum / min_loss_divisor.
- linear_accuracy (Smith 2017, as the seed ran it): grow the LR linearly from lr_start to lr_end and measure the
  next-byte accuracy on held-out val windows every eval_interval steps. The accuracy's rise is measured from its
  first point to its peak; the suggested lr_min is where it first gains rise_fraction of that rise ("the point at
  which the accuracy begins to increase"), the suggested lr_max where it first gains flat_fraction of it ("the point
  at which the accuracy curve flattens").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from chargpt.device import autocast
from chargpt.errors import RangeTestError
from chargpt.model.config import ModelConfig
from chargpt.train.config import LRRangeTestConfig, OptimizerConfig, TrainConfig
from chargpt.train.loop import StepTimer

log = logging.getLogger(__name__)


@dataclass
class RangeTestResult:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggested_lr: float  # the suggested max LR (what schedule.lr_max: auto takes)
    lr_at_min_loss: float
    stopped_early: bool
    rule: str
    suggested_lr_min: float | None = None  # linear_accuracy only
    accuracy_steps: list[int] = field(default_factory=list)  # linear_accuracy: the steps after which it measured
    accuracies: list[float] = field(default_factory=list)  # and the val accuracy there


def lr_at(cfg: LRRangeTestConfig, i: int) -> float:
    fraction = i / (cfg.iterations - 1)
    if cfg.method == "linear_accuracy":
        return cfg.lr_start + (cfg.lr_end - cfg.lr_start) * fraction
    return cfg.lr_start * (cfg.lr_end / cfg.lr_start) ** fraction


def accuracy_bounds(
    lrs: list[float], accuracies: list[float], rise_fraction: float, flat_fraction: float
) -> tuple[float, float]:
    """(lr_min, lr_max) from an accuracy-against-LR curve: the first LRs at which the accuracy has gained
    rise_fraction and flat_fraction of its rise from the first point to the peak (points past the peak, where a
    too-high LR pulls it down, are not looked at)."""
    peak = max(range(len(accuracies)), key=accuracies.__getitem__)
    rise = accuracies[peak] - accuracies[0]
    if peak == 0 or rise <= 0:
        raise RangeTestError(
            f"the val accuracy never rose above its first point ({accuracies[0]:.4f} at lr "
            f"{lrs[0]:.3g}) over {len(accuracies)} points up to lr {lrs[-1]:.3g}; no LR range can be "
            f"suggested (raise lr_range_test.lr_end or iterations)"
        )

    def first_reaching(fraction: float) -> float:
        level = accuracies[0] + fraction * rise
        return next(lr for lr, a in zip(lrs[: peak + 1], accuracies[: peak + 1]) if a >= level)

    return first_reaching(rise_fraction), first_reaching(flat_fraction)


def sweep_lr(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    cfg: LRRangeTestConfig,
    amp_dtype: torch.dtype | None = None,
    max_seconds: float | None = None,
    accuracy: Callable[[], float] | None = None,
    inputs: dict[str, torch.Tensor] | None = None,
) -> RangeTestResult:
    """max_seconds: stop (RunTooLong) when the sweep would take longer, timed over its iterations 2 to 4.
    accuracy: the val accuracy of the model now (linear_accuracy needs it). inputs: the forward's keyword inputs
    beside the batch."""
    if cfg.method == "linear_accuracy" and accuracy is None:
        raise ValueError("lr_range_test.method linear_accuracy needs an accuracy probe")
    device = next(model.parameters()).device
    timer = StepTimer(max_seconds, cfg.iterations, device)
    model.train()
    lrs, losses, smoothed, accuracy_steps, accuracies = [], [], [], [], []
    avg, best, stopped_early = 0.0, math.inf, False
    for i in tqdm(range(cfg.iterations), desc="lr range test", mininterval=2.0):
        lr = lr_at(cfg, i)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = next_batch()
        with autocast(device, amp_dtype):
            _, loss = model(x, y, **(inputs or {}))
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
        if cfg.method == "linear_accuracy" and (i + 1) % cfg.eval_interval == 0:
            accuracy_steps.append(i), accuracies.append(accuracy())
            model.train()
        timer.after(i + 1)
        if i >= cfg.skip_start:
            best = min(best, value)
            if value > cfg.divergence * best:
                log.info("smoothed loss %.3f > %.1f x best %.3f at lr %.3g: stopping", value, cfg.divergence, best, lr)
                stopped_early = True
                break
    return suggestion(cfg, lrs, losses, smoothed, stopped_early, accuracy_steps, accuracies)


def suggestion(
    cfg: LRRangeTestConfig,
    lrs: list[float],
    losses: list[float],
    smoothed: list[float],
    stopped_early: bool,
    accuracy_steps: list[int],
    accuracies: list[float],
) -> RangeTestResult:
    """The sweep's curves and the LR range they suggest, by cfg.method's rule."""
    usable = range(cfg.skip_start, len(smoothed))
    if not usable:
        raise RangeTestError(
            f"the LR range test diverged within its first {cfg.skip_start} steps (lr_range_test."
            f"lr_start {cfg.lr_start} too high?); no LR can be suggested"
        )
    i_min = min(usable, key=smoothed.__getitem__)
    result = RangeTestResult(
        lrs=lrs,
        losses=losses,
        smoothed=smoothed,
        suggested_lr=lrs[i_min] / cfg.min_loss_divisor,
        lr_at_min_loss=lrs[i_min],
        stopped_early=stopped_early,
        rule=f"lr at the minimum of the smoothed loss / {cfg.min_loss_divisor:g}",
    )
    if cfg.method == "linear_accuracy":
        if len(accuracies) < 2:
            raise RangeTestError(
                f"the LR range test stopped after {len(lrs)} steps, with {len(accuracies)} accuracy "
                f"point(s) (one every lr_range_test.eval_interval: {cfg.eval_interval}); lower "
                f"eval_interval or lr_end"
            )
        result.accuracy_steps, result.accuracies = accuracy_steps, accuracies
        result.suggested_lr_min, result.suggested_lr = accuracy_bounds(
            [lrs[s] for s in accuracy_steps], accuracies, cfg.rise_fraction, cfg.flat_fraction
        )
        result.rule = (
            f"val accuracy against a linear LR: lr_min where it first gains {cfg.rise_fraction:g} of its "
            f"rise to the peak, lr_max where it first gains {cfg.flat_fraction:g} of it"
        )
    return result


def run_range_test(
    *,
    model: ModelConfig,
    optimizer: OptimizerConfig,
    momentum: float,
    range_test: LRRangeTestConfig,
    train: TrainConfig,
    device: torch.device,
    train_split: torch.Tensor,
    amp_dtype: torch.dtype | None,
    max_seconds: float | None = None,
    val_split: torch.Tensor | None = None,
) -> RangeTestResult:
    """The LR range test of a run: its own model, optimizer (at the schedule's starting `momentum`) and batches, from
    its seed. linear_accuracy measures the accuracy on the first range_test.eval_batches x train.batch_size windows
    of val_split."""
    from chargpt.data.batches import BatchSampler
    from chargpt.evaluation.scoring import split_score
    from chargpt.model.gpt import GPT
    from chargpt.train.optimizers import build_optimizer
    from chargpt.train.run import aux_loss_weights

    torch.manual_seed(train.seed)
    net = GPT(model).to(device)
    # the objective of the run's first steps, which the range test stands for
    inputs = {"aux_weights": aux_loss_weights(0.0, model.n_layer, device)} if train.aux_losses else {}
    opt = build_optimizer(net, optimizer, lr=range_test.lr_start, momentum=momentum)
    sampler = BatchSampler(train_split, model.context, train.batch_size, train.seed, device)
    accuracy = None
    if range_test.method == "linear_accuracy":
        if val_split is None:
            raise ValueError("lr_range_test.method linear_accuracy needs the val split")
        held_out = val_split[: range_test.eval_batches * train.batch_size * model.context + 1]

        def accuracy() -> float:
            return split_score(
                net, held_out, model.context, train.batch_size, device=device, amp_dtype=amp_dtype
            ).accuracy

    return sweep_lr(net, opt, sampler.next, range_test, amp_dtype, max_seconds, accuracy, inputs)
