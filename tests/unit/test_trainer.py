import math

import pytest
import torch
from conftest import tiny_training_run

from chargpt.errors import DivergedError
from chargpt.train.loop import LoopConfig, LoopHooks, LoopState, TrainParts, TrainStep, train_loop
from chargpt.train.run import loop_hooks


class NanAt(torch.nn.Module):
    """A one-parameter model whose loss turns NaN on its `bad`-th call."""

    def __init__(self, bad: int):
        super().__init__()
        self.w, self.calls, self.bad = torch.nn.Parameter(torch.ones(())), 0, bad

    def forward(self, x, y):
        self.calls += 1
        loss = (self.w - 2.0) ** 2
        return None, loss * math.nan if self.calls == self.bad else loss


def run(model, total=10, checkpoint_every=2, check_every_step=True, stop=lambda: None):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    saved, logged = [], []
    cfg = LoopConfig(
        total, log_interval=5, eval_interval=5, checkpoint_every=checkpoint_every, check_every_step=check_every_step
    )
    batch = lambda: (torch.zeros(1, 1), torch.zeros(1, 1))  # noqa: E731
    result = None
    parts = TrainParts(model, opt, sched, batch, TrainStep(model, model.parameters(), opt))
    hooks = LoopHooks(
        on_metrics=lambda s, m: logged.append((s, m)),
        on_checkpoint=lambda st: saved.append(st.step),
        stop_requested=stop,
    )
    try:
        result = train_loop(parts, cfg, hooks)
    except DivergedError as e:
        return e, saved, logged
    return result, saved, logged


def test_nan_loss_stops_within_the_step_and_keeps_the_last_good_checkpoint():
    error, saved, logged = run(NanAt(bad=3))
    assert isinstance(error, DivergedError) and error.step == 3
    assert saved == [2] and logged == []


def test_without_per_step_checks_divergence_is_caught_before_the_next_save():
    # The NaN loss of step 3 poisons the weights; the checkpoint at step 4 refuses to save them.
    error, saved, _ = run(NanAt(bad=3), check_every_step=False)
    assert isinstance(error, DivergedError) and error.step == 4 and saved == [2]
    error, saved, _ = run(NanAt(bad=3), check_every_step=False, checkpoint_every=0)
    assert isinstance(error, DivergedError) and error.step == 5  # else at the log interval


def test_a_clean_run_logs_every_interval_and_counts_tokens():
    result, saved, logged = run(NanAt(bad=-1), total=10)
    assert isinstance(result, LoopState) and result.step == 10 and result.tokens == 10
    assert [s for s, _ in logged] == [5, 10] and saved == [2, 4, 6, 8]  # no checkpoint at the end: the caller saves
    assert logged[-1][1]["train_loss"] < logged[0][1]["train_loss"]


def test_a_stop_request_checkpoints_then_raises():
    from chargpt.errors import Interrupted

    model = NanAt(bad=-1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = lambda: (torch.zeros(1, 1), torch.zeros(1, 1))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    parts = TrainParts(model, opt, sched, batch, TrainStep(model, model.parameters(), opt))
    saved, polls = [], iter(range(100))
    hooks = LoopHooks(
        on_checkpoint=lambda state: saved.append((state.step, model.w.item())),
        stop_requested=lambda: 15 if next(polls) == 2 else None,  # asked during the third step
    )
    with pytest.raises(Interrupted, match="SIGTERM after step 3"):
        train_loop(parts, LoopConfig(10, log_interval=5, eval_interval=5, checkpoint_every=0), hooks)
    # the stop's own save, at the step it stopped after, with the weights of that step: w = 2 - 0.8^3 by SGD
    assert saved == [(3, pytest.approx(2 - 0.8**3))]


def test_iterations_to_target_reads_the_val_probe_curve():
    from chargpt.train.run import iterations_to_targets

    curve = [
        {"step": 10, "train_loss": 3.0},
        {"step": 20, "train_loss": 2.0, "val_probe_bpc": 3.1},
        {"step": 30, "train_loss": 1.9},
        {"step": 40, "train_loss": 1.8, "val_probe_bpc": 2.45},
        {"step": 60, "train_loss": 1.7, "val_probe_bpc": 2.5},
    ]
    assert iterations_to_targets(curve, [3.0, 2.5, 2.45, 2.0]) == {
        "iters_to_bpc_3": 40,
        "iters_to_bpc_2.5": 40,
        "iters_to_bpc_2.45": 40,
        "iters_to_bpc_2": None,
    }


def test_before_step_sees_every_step_index_also_after_a_resume():
    seen = []
    model = NanAt(bad=-1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    batch = lambda: (torch.zeros(1, 1), torch.zeros(1, 1))  # noqa: E731
    parts = TrainParts(model, opt, sched, batch, TrainStep(model, model.parameters(), opt))
    train_loop(parts, LoopConfig(8, 4, 4), LoopHooks(before_step=seen.append), LoopState(step=5))
    assert seen == [5, 6, 7]


def test_a_training_run_with_aux_losses_weights_them_from_the_global_step(tmp_path):
    run = tiny_training_run(tmp_path, train={"aux_losses": True})
    aux = run.aux_losses
    assert run.parts.step.inputs == aux.inputs and loop_hooks(run).before_step == aux.before_step
    aux.before_step(0)
    assert aux.weights.tolist() == [1.0] and aux.inputs() == {"aux_weights": aux.weights}
    aux.before_step(10)  # layer 1 of 2 fades out over the first quarter
    assert aux.weights.tolist() == pytest.approx([0.6])
    aux.before_step(25)
    assert aux.weights is None and aux.inputs() == {}  # all off: the forward computes none
    plain = tiny_training_run(tmp_path)
    assert plain.aux_losses is None and plain.parts.step.inputs() == {}


def test_a_muon_run_records_the_dtype_of_its_iteration(tmp_path):
    from chargpt.device import cpu_has_native_bf16

    params = tiny_training_run(tmp_path, optimizer={"name": "muon"}).params()
    assert params["optimizer"]["muon_ns_dtype"] == "auto"
    assert params["resolved"]["muon_ns_dtype"] == ("torch.bfloat16" if cpu_has_native_bf16() else "torch.float32")
    forced = tiny_training_run(tmp_path, optimizer={"name": "muon", "muon_ns_dtype": "bf16"})
    assert forced.params()["resolved"]["muon_ns_dtype"] == "torch.bfloat16"
    assert "muon_ns_dtype" not in tiny_training_run(tmp_path).params()["resolved"]


class Scripted(torch.nn.Module):
    """Returns the losses it is given, one per call (a blow-up that stays finite, as clipping can keep it)."""

    def __init__(self, losses):
        super().__init__()
        self.w, self.losses = torch.nn.Parameter(torch.zeros(())), iter(losses)

    def forward(self, x, y):
        return None, self.w * 0 + next(self.losses)


def scripted_loop(losses, evaluate=dict, **cfg):
    model = Scripted(losses)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    parts = TrainParts(
        model, opt, sched, lambda: (torch.zeros(1, 1), torch.zeros(1, 1)), TrainStep(model, model.parameters(), opt)
    )
    return train_loop(parts, LoopConfig(len(losses), 5, 5, **cfg), LoopHooks(evaluate=evaluate))


def test_a_finite_blow_up_of_the_train_loss_is_divergence():
    scripted_loop([5.5] * 5 + [5.0] * 5 + [6.0] * 5, max_loss_rise=1.0)  # within the margin: trains on
    with pytest.raises(
        DivergedError, match=r"at step 15: train loss 7.5 is more than 1 above the first interval's 5.5"
    ):
        scripted_loop([5.5] * 5 + [5.0] * 5 + [7.5] * 5, max_loss_rise=1.0)


def test_a_val_probe_worse_than_a_uniform_guess_is_divergence():
    with pytest.raises(DivergedError, match=r"at step 5: val_probe_bpc 9194 is above 8"):
        scripted_loop([5.5] * 10, evaluate=lambda: {"val_probe_bpc": 9193.7}, metric_limits={"val_probe_bpc": 8.0})


class Slow(Scripted):
    def forward(self, x, y):
        import time

        time.sleep(0.01)
        return super().forward(x, y)


def test_a_run_estimated_over_its_time_limit_stops_after_its_first_steps():
    from chargpt.errors import RunTooLong

    model = Slow([5.0] * 1000)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    parts = TrainParts(
        model,
        opt,
        torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
        lambda: (torch.zeros(1, 1), torch.zeros(1, 1)),
        TrainStep(model, model.parameters(), opt),
    )
    with pytest.raises(
        RunTooLong,
        match=r"estimated 0.0 hours .* x 996 steps left, timed after step 4\), over the "
        r"limit of 0.000278 hours",
    ) as err:
        train_loop(parts, LoopConfig(1000, 50, 50, max_seconds=1.0))
    assert 5 < err.value.estimate < 60  # ~0.01 s a step
    model = Slow([5.0] * 20)
    train_loop(
        TrainParts(model, opt, parts.scheduler, parts.next_batch, TrainStep(model, model.parameters(), opt)),
        LoopConfig(20, 10, 10, max_seconds=1.0),
    )  # 20 steps fit: it trains
