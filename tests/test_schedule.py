import pytest
import torch

from chargpt.config import OptimizerConfig, ScheduleConfig
from chargpt.schedule import build_onecycle, build_optimizer, current_momentum

# 100 steps, lr 1e-4 -> 0.1 -> 1e-4 -> 1e-5, momentum 0.9 -> 0.8 -> 0.9, linear ramps, pct_start 0.45:
# phase 1 ends at step 44 (0.45 * 100 - 1), phase 2 at step 88, phase 3 at step 99.
EXPECTED = [  # step, lr, momentum
    (0, 1.0e-4, 0.90),
    (22, 0.05005, 0.85),
    (44, 0.1, 0.80),
    (66, 0.05005, 0.85),
    (88, 1.0e-4, 0.90),
    (95, 1.0e-4 - 7 / 11 * 9.0e-5, 0.90),
    (99, 1.0e-5, 0.90),
]


def trace(optimizer_name: str, schedule: ScheduleConfig, total: int) -> list[tuple[float, float]]:
    model = torch.nn.Linear(4, 4)
    opt = build_optimizer(model, OptimizerConfig(name=optimizer_name), lr=schedule.lr_min, momentum=schedule.momentum_max)
    sched = build_onecycle(opt, schedule, lr_max=schedule.lr_max, total_steps=total)
    seen = []
    for step in range(total):
        seen.append((opt.param_groups[0]["lr"], current_momentum(opt)))
        opt.step()
        if step + 1 < total:
            sched.step()
    return seen


@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
def test_onecycle_table(optimizer_name):
    cfg = ScheduleConfig(lr_min=1e-4, lr_max=0.1, momentum_max=0.9, momentum_min=0.8, pct_start=0.45,
                         final_div_factor=10, anneal="linear")
    seen = trace(optimizer_name, cfg, 100)
    for step, lr, momentum in EXPECTED:
        assert seen[step][0] == pytest.approx(lr, rel=1e-9, abs=1e-12), f"lr at step {step}"
        assert seen[step][1] == pytest.approx(momentum, rel=1e-9), f"momentum at step {step}"


def test_seed_schedule_ends_at_the_minimum_lr():
    cfg = ScheduleConfig()  # the defaults: 1e-4 -> 0.1 -> 1e-4, final_div_factor 1
    seen = trace("sgd", cfg, 1000)
    assert seen[0] == (pytest.approx(1e-4), pytest.approx(0.9))
    assert max(lr for lr, _ in seen) == pytest.approx(0.1)
    assert min(m for _, m in seen) == pytest.approx(0.8)
    assert seen[-1] == (pytest.approx(1e-4), pytest.approx(0.9))


def test_weight_decay_skips_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, OptimizerConfig(name="sgd", weight_decay=1e-5), lr=0.1, momentum=0.9)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 1e-5 and [p.shape for p in decayed["params"]] == [(4, 4)]
    assert plain["weight_decay"] == 0.0 and len(plain["params"]) == 3
    assert opt.defaults["nesterov"] is True
