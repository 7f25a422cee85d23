import math

import pytest
import torch
from conftest import tiny_text

from chargpt.data.batches import BatchSampler
from chargpt.errors import RangeTestError
from chargpt.model.config import ModelConfig
from chargpt.model.gpt import GPT
from chargpt.train.config import LRRangeTestConfig
from chargpt.train.lr_range import accuracy_bounds, lr_at, sweep_lr


def test_lr_grows_exponentially_from_start_to_end():
    cfg = LRRangeTestConfig(lr_start=1e-5, lr_end=1e4, iterations=10, skip_start=0, smoothing=0.5)
    assert [lr_at(cfg, i) for i in range(10)] == pytest.approx([10.0**e for e in range(-5, 5)], rel=1e-12)


def test_range_test_stops_on_divergence_and_suggests_below_it():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, d_model=32, n_head=2, d_ff=64, context=16, dropout=0.0))
    data = torch.frombuffer(bytearray(tiny_text(20_000)), dtype=torch.uint8)
    sampler = BatchSampler(data, 16, 8, seed=0, device=torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    cfg = LRRangeTestConfig(lr_start=1e-3, lr_end=1e4, iterations=80, skip_start=3, divergence=2.0)
    result = sweep_lr(model, opt, sampler.next, cfg)
    assert result.stopped_early and len(result.lrs) < 80  # LR 1e4 with SGD diverges long before the end
    # the smoothing recomputed from the raw losses and the config: a bias-corrected EMA
    expected, avg = [], 0.0
    for i, loss in enumerate(result.losses):
        avg = cfg.smoothing * avg + (1 - cfg.smoothing) * loss
        expected.append(avg / (1 - cfg.smoothing ** (i + 1)))
    assert result.smoothed == pytest.approx(expected, rel=1e-12)
    i_min = min(range(3, len(expected)), key=expected.__getitem__)
    assert result.lr_at_min_loss == result.lrs[i_min]
    assert result.suggested_lr == pytest.approx(result.lr_at_min_loss / 10)
    assert all(math.isfinite(v) for v in result.smoothed)


def test_linear_accuracy_grows_the_lr_linearly():
    cfg = LRRangeTestConfig(method="linear_accuracy", lr_start=0.01, lr_end=1.0, iterations=100, eval_interval=10)
    assert [lr_at(cfg, i) for i in (0, 33, 66, 99)] == pytest.approx([0.01, 0.34, 0.67, 1.0], rel=1e-12)


def logistic(lr: float, low=0.2, high=0.6, centre=0.3, width=0.02) -> float:
    return low + (high - low) / (1 + math.exp(-(lr - centre) / width))


def test_the_accuracy_rule_on_a_synthetic_curve():
    """A logistic rise from 0.2 to 0.6 centred at LR 0.3: 10% of the rise is reached at 0.3 - 0.02 ln 9 and 90% at
    0.3 + 0.02 ln 9; on a grid, the first grid LR at or past each. A fall past the peak (divergence) is ignored."""
    lrs = [i / 1000 for i in range(1, 1001)]
    accuracies = [logistic(lr) if lr <= 0.6 else logistic(0.6) - (lr - 0.6) for lr in lrs]
    lr_min, lr_max = accuracy_bounds(lrs, accuracies, rise_fraction=0.1, flat_fraction=0.9)
    rise = max(accuracies) - accuracies[0]
    expect_min = next(lr for lr, a in zip(lrs, accuracies) if a >= accuracies[0] + 0.1 * rise)
    expect_max = next(lr for lr, a in zip(lrs, accuracies) if a >= accuracies[0] + 0.9 * rise)
    assert (lr_min, lr_max) == (expect_min, expect_max)
    assert lr_min == pytest.approx(0.3 - 0.02 * math.log(9), abs=1e-3)
    assert lr_max == pytest.approx(0.3 + 0.02 * math.log(9), abs=1e-3)
    with pytest.raises(RangeTestError, match="never rose above its first point"):
        accuracy_bounds(lrs[:5], [0.5, 0.4, 0.3, 0.2, 0.1], 0.1, 0.9)


def test_range_test_measures_accuracy_every_interval_and_suggests_both_bounds():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, d_model=32, n_head=2, d_ff=64, context=16, dropout=0.0))
    data = torch.frombuffer(bytearray(tiny_text(20_000)), dtype=torch.uint8)
    sampler = BatchSampler(data, 16, 8, seed=0, device=torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    cfg = LRRangeTestConfig(
        method="linear_accuracy",
        lr_start=1e-3,
        lr_end=0.1,
        iterations=60,
        eval_interval=5,
        skip_start=3,
        smoothing=0.8,
        divergence=100.0,
    )
    current = []  # the accuracy "probe" reads the LR the last step took: a known curve of the LR

    def probe() -> float:
        current.append(opt.param_groups[0]["lr"])
        return logistic(current[-1], centre=0.05, width=0.005)

    result = sweep_lr(model, opt, sampler.next, cfg, accuracy=probe)
    assert result.accuracy_steps == list(range(4, 60, 5)) and len(result.accuracies) == 12
    assert current == pytest.approx([lr_at(cfg, s) for s in result.accuracy_steps])
    expected = accuracy_bounds(current, [logistic(lr, centre=0.05, width=0.005) for lr in current], 0.1, 0.9)
    assert (result.suggested_lr_min, result.suggested_lr) == expected
    assert result.suggested_lr_min < 0.05 < result.suggested_lr and not result.stopped_early


class ScriptedLoss(torch.nn.Module):
    """A model whose training loss is a given sequence, one value a step."""

    def __init__(self, losses: list[float]):
        super().__init__()
        self.w, self.losses = torch.nn.Parameter(torch.zeros(())), iter(losses)

    def forward(self, x, y):
        return None, self.w * 0 + next(self.losses)


def test_the_first_skip_start_steps_never_hold_the_minimum():
    """The lowest loss comes at step 0 and the next lowest at step 4: with skip_start 3 the minimum is step 4's,
    with 0 it is step 0's; with no smoothing (0) the curve is the raw losses."""
    losses = [0.5, 5.0, 5.0, 5.0, 1.0, 2.0, 3.0, 4.0, 4.5, 4.8]
    for skip_start, expected in ((3, 4), (0, 0)):
        model = ScriptedLoss(losses)
        cfg = LRRangeTestConfig(lr_start=1e-3, lr_end=1e3, iterations=10, skip_start=skip_start, smoothing=0.0,
                                divergence=100.0, min_loss_divisor=1.0)  # fmt: skip
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        result = sweep_lr(model, opt, lambda: (None, None), cfg)
        assert result.smoothed == pytest.approx(losses, rel=1e-6)  # the losses, as float32 gives them
        assert result.lr_at_min_loss == pytest.approx(lr_at(cfg, expected), rel=1e-12) == result.suggested_lr
