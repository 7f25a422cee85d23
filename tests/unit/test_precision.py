"""Which precision each device gets, and fp16's GradScaler path (run on the CPU, where fp16 can be forced)."""

import math
from dataclasses import replace

import pytest
import torch
from conftest import tiny_training_run

from chargpt.device import autocast, resolve_amp_dtype
from chargpt.errors import DivergedError
from chargpt.train.loop import LoopConfig, LoopHooks, LoopState, TrainParts, TrainStep, train_loop


@pytest.mark.parametrize(
    "capability, expected",
    [((7, 5), torch.float16), ((7, 0), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)],
)
def test_auto_picks_fp16_below_compute_capability_8_and_bf16_from_it(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_amp_dtype("auto", torch.device("cuda", 0)) == expected


def test_a_forced_precision_is_used_anywhere(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    for device in (torch.device("cpu"), torch.device("cuda", 0)):
        assert resolve_amp_dtype("fp16", device) == torch.float16
        assert resolve_amp_dtype("bf16", device) == torch.bfloat16
        assert resolve_amp_dtype("fp32", device) is None


class InfAt(torch.nn.Module):
    """A one-parameter model whose loss is inf on the calls in `bad` (fp16 overflow: the scaler skips those)."""

    def __init__(self, bad):
        super().__init__()
        self.w, self.calls, self.bad = torch.nn.Parameter(torch.ones(())), 0, set(bad)

    def forward(self, x, y):
        self.calls += 1
        loss = (self.w - 2.0) ** 2
        return None, loss * math.inf if self.calls in self.bad else loss


def run_fp16(model, total=10):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu")
    step = TrainStep(
        model, model.parameters(), opt, amp_context=lambda: autocast(torch.device("cpu"), torch.float16), scaler=scaler
    )
    logged = []
    parts = TrainParts(model, opt, sched, lambda: (torch.zeros(1, 1), torch.zeros(1, 1)), step)
    return train_loop(parts, LoopConfig(total, 5, 5), LoopHooks(on_metrics=lambda s, m: logged.append((s, m)))), logged


def test_steps_the_scaler_skips_are_counted_and_logged_not_taken_for_divergence():
    model = InfAt(bad={2, 3})
    result, logged = run_fp16(model)
    assert result.step == 10 and result.skipped_steps == 2
    first, second = logged[0][1], logged[1][1]
    assert first["skipped_steps"] == 2 and first["loss_scale"] == 65536.0 / 4  # halved at each skip
    assert math.isfinite(first["train_loss"])  # the mean over the 3 steps that were taken
    assert second["skipped_steps"] == 2
    # The weight moved only on the steps taken: each SGD step on (w - 2)^2 at LR 0.1 scales w - 2 by 0.8.
    assert model.w.item() == pytest.approx(2.0 - 0.8**8, rel=1e-6)


def test_a_collapsed_loss_scale_is_divergence():
    with pytest.raises(DivergedError, match=r"at step 25: fp16 loss scale collapsed to 0.00195.* \(25 steps skipped\)"):
        run_fp16(InfAt(bad=range(1, 100)), total=40)


def test_a_resumed_fp16_run_continues_bit_for_bit_with_its_scaler(tmp_path):
    """The GradScaler's scale and growth tracker are part of the saved state (CPU, fp16 autocast forced)."""

    from chargpt.train.checkpoint import restore_training_state
    from chargpt.train.run import loop_hooks

    sections = {"train": {"precision": "fp16", "iterations": 12, "log_interval": 4, "eval_interval": 4}}

    def build():
        torch.manual_seed(0)
        return tiny_training_run(tmp_path, amp_dtype=torch.float16, **sections)

    plain = build()
    plain.scaler._growth_interval = 3  # so that the scale grows within the run and the tracker matters
    train_loop(plain.parts, plain.loop, loop_hooks(plain, recording=False))

    broken = build()
    broken.scaler._growth_interval = 3
    state_path = tmp_path / "state.pt"

    cfg = replace(broken.loop, checkpoint_every=5)  # saved at step 5 only: the run "breaks" after it
    saving = loop_hooks(broken, recording=False, state_path=state_path)
    hooks = replace(saving, on_checkpoint=lambda state: saving.on_checkpoint(state) if state.step == 5 else None)
    train_loop(broken.parts, cfg, hooks)
    resumed = build()
    resumed.scaler._growth_interval = 3
    saved = restore_training_state(state_path, **resumed.state_parts)
    assert saved["scaler"]["scale"] > 65536.0  # it grew before the save
    train_loop(resumed.parts, resumed.loop, loop_hooks(resumed, recording=False), LoopState(**saved["loop"]))
    assert resumed.scaler.state_dict() == plain.scaler.state_dict()
    for a, b in zip(plain.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "precision, amp_dtype, steps", [("auto", None, 6), ("auto", torch.bfloat16, 10), ("fp32", None, 10)]
)
def test_a_share_of_the_steps_where_auto_precision_gives_fp32(tmp_path, precision, amp_dtype, steps):
    """A recipe timed in bf16 trains round(iterations x train.fp32_iterations_fraction) steps where precision: auto
    resolves to fp32: the loop, the schedule and the recorded params all take them. In bf16, or in a precision set
    outright, it trains its iterations."""
    from chargpt.train.loop import train_loop
    from chargpt.train.run import loop_hooks

    train = {"iterations": 10, "fp32_iterations_fraction": 0.55, "eval_interval": 5, "precision": precision}
    run = tiny_training_run(tmp_path, amp_dtype, train=train)
    assert run.iterations == steps and run.params()["resolved"]["iterations"] == steps
    assert run.loop.total_steps == steps and run.scheduler.total_steps == steps
    state = train_loop(run.parts, run.loop, loop_hooks(run, recording=False))
    assert state.step == steps and run.scheduler.last_epoch == steps - 1  # the schedule ran its whole course


def test_a_state_resumed_where_auto_precision_resolves_otherwise_is_refused(tmp_path):
    """A run started in bf16 (precision: auto on a CPU with native bf16) and resumed where auto gives fp32 would
    continue a bf16 run in fp32, with fp32's share of the steps: refused, naming both and the way to continue it."""
    from chargpt.errors import CheckpointError
    from chargpt.train.checkpoint import restore_training_state
    from chargpt.train.run import loop_hooks

    train = {"iterations": 10, "fp32_iterations_fraction": 0.5, "checkpoint_every": 4, "precision": "auto"}
    started = tiny_training_run(tmp_path, torch.bfloat16, train=train)
    state_path = tmp_path / "state.pt"
    train_loop(started.parts, started.loop, loop_hooks(started, recording=False, state_path=state_path))
    elsewhere = tiny_training_run(tmp_path, None, train=train)
    with pytest.raises(CheckpointError) as refused:
        restore_training_state(state_path, **elsewhere.state_parts)
    assert "precision: checkpoint 'bf16', now 'fp32'; iterations: checkpoint 10, now 5" in str(refused.value)
    assert "Set train.precision to 'bf16' to continue it" in str(refused.value)
    same = tiny_training_run(tmp_path, torch.bfloat16, train=train)
    assert restore_training_state(state_path, **same.state_parts)["loop"]["step"] == 8
