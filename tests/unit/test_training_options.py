"""#29's training options: the embeddings', head's and scalars' LRs, Muon's momentum warm-up, a batch-size warm-up."""

import copy

import pytest
import torch
import yaml
from test_schedule import tiny_gpt
from test_trainer import tiny_training_run

from chargpt.errors import ConfigError
from chargpt.model.config import ModelConfig
from chargpt.model.gpt import GPT
from chargpt.pipeline.config import load_run_config
from chargpt.train.checkpoint import restore_training_state
from chargpt.train.config import OptimizerConfig, ScheduleConfig, TrainConfig
from chargpt.train.loop import LoopState, train_loop
from chargpt.train.optimizers import build_optimizer
from chargpt.train.run import RunHooks
from chargpt.train.schedule import build_scheduler


def refused(tmp_path, params, run: dict) -> str:
    """The error params.yaml's run `t` with these sections gets."""
    del params["grids"]
    params["runs"] = {"t": run}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError) as caught:
        load_run_config("t", tmp_path / "params.yaml")
    return str(caught.value)


# --- the head's and the scalars' LRs ------------------------------------------------------------------------------


def scaled_parameters(model: GPT, which: str) -> set[int]:
    if which == "embedding":  # the tables; the head is untied, so not one of them
        return {id(model.tok_emb.weight), id(model.pos_emb.weight)}
    if which == "head":
        return {id(model.head.weight)}
    return {id(p) for p in model.parameters() if p.dim() < 2}  # biases, LayerNorm gains, the options' weights


@pytest.mark.parametrize("which", ["embedding", "head", "scalar"])
@pytest.mark.parametrize("optimizer_name, schedule", [("muon", "onecycle"), ("adamw", "onecycle"), ("sgd", "cosine")])
def test_each_lr_scale_multiplies_its_parameters_lr_at_every_step(which, optimizer_name, schedule):
    model = GPT(ModelConfig(n_layer=2, d_model=16, n_head=2, d_ff=32, context=8, positions="input",
                            value_residual=True, embedding_skip=True))  # fmt: skip
    cfg = OptimizerConfig(name=optimizer_name, muon_ns_dtype="fp32", **{f"{which}_lr_scale": 4.0})
    optimizer = build_optimizer(model, cfg, lr=1e-3, momentum=0.9)
    scaled = [g for g in optimizer.param_groups if "lr_scale" in g]
    assert len(scaled) == 1 and {id(p) for p in scaled[0]["params"]} == scaled_parameters(model, which)
    assert scaled[0]["weight_decay"] == (0.0 if which == "scalar" else cfg.weight_decay)  # scalars are never decayed
    every = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in model.parameters())  # each parameter in exactly one group
    others = [g for g in optimizer.param_groups if "lr_scale" not in g]
    scheduler = build_scheduler(
        optimizer, ScheduleConfig(name=schedule, lr_min=1e-4, lr_max=0.01, warmup_steps=5), lr_max=0.01, total_steps=30
    )
    peak = peak_other = 0.0
    for _ in range(29):
        if schedule == "onecycle":  # the cosine's floor (lr_min) is shared, so there only the peak is scaled
            assert scaled[0]["lr"] == pytest.approx(4.0 * others[0]["lr"], rel=1e-9)
        peak, peak_other = max(peak, scaled[0]["lr"]), max(peak_other, others[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert peak == pytest.approx(4.0 * peak_other, rel=1e-9) and peak_other > 0.005
    # 1.0, the default, builds the groups as before: decay and no decay, no group of its own
    default = build_optimizer(model, OptimizerConfig(name=optimizer_name, muon_ns_dtype="fp32"), lr=1e-3, momentum=0.9)
    assert not any("lr_scale" in g for g in default.param_groups)


def test_a_head_lr_scale_on_a_tied_head_is_refused_naming_both_keys(tmp_path, params):
    message = refused(tmp_path, params, {"model": {"tie_embeddings": True}, "optimizer": {"head_lr_scale": 2.0}})
    assert "optimizer.head_lr_scale: 2.0 with model.tie_embeddings: true" in message
    assert "optimizer.embedding_lr_scale" in message


# --- Muon's momentum warm-up --------------------------------------------------------------------------------------


def muon_steps(optimizer, model, n: int, seed: int) -> list[float]:
    """n optimizer steps on random bytes; Muon's momentum at each."""
    gen, momenta = torch.Generator().manual_seed(seed), []
    for _ in range(n):
        x = torch.randint(0, 256, (2, 16), generator=gen)
        model(x, x)[1].backward()
        optimizer.step()
        optimizer.zero_grad()
        momenta.append(optimizer.muon.param_groups[0]["momentum"])
    return momenta


WARMUP = OptimizerConfig(
    name="muon", muon_ns_dtype="fp32", muon_momentum_warmup_steps=4, muon_momentum_warmup_start=0.5
)


def test_muons_momentum_rises_from_its_start_to_the_schedules_over_the_warm_up():
    model = tiny_gpt()
    optimizer = build_optimizer(model, WARMUP, lr=1e-2, momentum=0.9)
    assert muon_steps(optimizer, model, 6, seed=1) == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9, 0.9], abs=1e-12)
    assert all(g["betas"][0] == 0.9 for g in optimizer.adamw.param_groups)  # AdamW keeps the schedule's beta1
    # ... and the update is Muon's at that momentum: the same as a plain Muon given those momenta by hand
    plain_model = tiny_gpt()
    plain = build_optimizer(plain_model, OptimizerConfig(name="muon", muon_ns_dtype="fp32"), lr=1e-2, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    for momentum in (0.5, 0.6, 0.7, 0.8, 0.9, 0.9):
        plain.muon.param_groups[0]["betas"] = (momentum, 0.99)  # Muon's group only
        x = torch.randint(0, 256, (2, 16), generator=gen)
        plain_model(x, x)[1].backward()
        plain.step()
        plain.zero_grad()
    for a, b in zip(model.parameters(), plain_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_restored_optimizer_continues_the_warm_up_where_it_stopped():
    model = tiny_gpt()
    optimizer = build_optimizer(model, WARMUP, lr=1e-2, momentum=0.9)
    muon_steps(optimizer, model, 2, seed=1)
    restored = build_optimizer(model, WARMUP, lr=1e-2, momentum=0.9)
    restored.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as through a checkpoint file
    assert muon_steps(restored, model, 3, seed=2) == pytest.approx([0.7, 0.8, 0.9], abs=1e-12)


def test_without_a_warm_up_muon_takes_the_schedules_momentum_from_the_first_step():
    model = tiny_gpt()
    optimizer = build_optimizer(model, OptimizerConfig(name="muon", muon_ns_dtype="fp32"), lr=1e-2, momentum=0.9)
    assert muon_steps(optimizer, model, 2, seed=1) == [0.9, 0.9]


def test_a_momentum_warm_up_for_another_optimizer_is_refused_naming_its_key(tmp_path, params):
    message = refused(tmp_path, params, {"optimizer": {"name": "adamw", "muon_momentum_warmup_steps": 300}})
    assert "runs.t.optimizer" in message and "muon_momentum_warmup_steps: 300 applies to name: muon only" in message


# --- the batch-size warm-up ---------------------------------------------------------------------------------------


def test_the_batch_grows_in_steps_of_its_start_over_its_fraction_of_the_steps():
    t = TrainConfig(batch_size=32, batch_size_warmup={"start": 8, "fraction": 0.25})
    # 8 + 24 s / 25, rounded down to a multiple of 8, over the first 25 of 100 steps; then 32
    assert [t.batch_size_at(s, 100) for s in range(100)] == [8] * 9 + [16] * 8 + [24] * 8 + [32] * 75
    assert [TrainConfig(batch_size=32).batch_size_at(s, 100) for s in (0, 99)] == [32, 32]


WARMUP_RUN = {"train": {"iterations": 12, "batch_size": 8, "log_interval": 4, "eval_interval": 4,
                        "batch_size_warmup": {"start": 2, "fraction": 0.5}}}  # fmt: skip


def test_a_run_draws_each_steps_batch_of_the_schedule_and_counts_its_tokens(tmp_path):
    run = tiny_training_run(tmp_path, **WARMUP_RUN)
    parts, sizes = run.parts(), []
    draw = parts.next_batch
    parts.next_batch = lambda: (batch := draw(), sizes.append(batch[0].shape[0]))[0]
    result = train_loop(parts, run.loop_config(), RunHooks(run, recording=False))
    assert sizes == [2, 2, 4, 4, 6, 6, 8, 8, 8, 8, 8, 8]  # 2 + s over the first 6 steps, in steps of 2
    assert result.tokens == sum(sizes) * 16  # context 16


def test_a_resumed_batch_warm_up_continues_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    plain = tiny_training_run(tmp_path, **WARMUP_RUN)
    train_loop(plain.parts(), plain.loop_config(), RunHooks(plain, recording=False))

    torch.manual_seed(0)
    broken, state_path = tiny_training_run(tmp_path, **WARMUP_RUN), tmp_path / "state.pt"
    cfg = broken.loop_config()
    cfg.checkpoint_every = 3  # saved at step 3, mid warm-up, only: the run "breaks" after it
    hooks = RunHooks(broken, recording=False, state_path=state_path)
    hooks.on_checkpoint = lambda state: RunHooks.on_checkpoint(hooks, state) if state.step == 3 else None
    train_loop(broken.parts(), cfg, hooks)

    torch.manual_seed(5)
    resumed = tiny_training_run(tmp_path, **WARMUP_RUN)
    saved = restore_training_state(state_path, **resumed.state_parts)
    train_loop(resumed.parts(), resumed.loop_config(), RunHooks(resumed, recording=False), LoopState(**saved["loop"]))
    for a, b in zip(plain.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "train, expected",
    [
        ({"batch_size": 8, "batch_size_warmup": {"start": 3, "fraction": 0.5}}, "start: 3 must be below "
         "train.batch_size (8) and divide it"),
        ({"batch_size": 8, "batch_size_warmup": {"start": 8, "fraction": 0.5}}, "start: 8 must be below"),
        ({"batch_size": 8, "nproc": 2, "batch_size_warmup": {"start": 1, "fraction": 0.5}}, "start: 1 does not split "
         "into 2 process(es) x 1 micro-batch(es)"),
        ({"batch_size": 8, "batch_size_warmup": {"start": 2, "fraction": 1.0}}, "fraction: Input should be less "
         "than 1"),
    ],
)  # fmt: skip
def test_a_batch_warm_up_that_cannot_be_drawn_is_refused_naming_its_key(tmp_path, params, train, expected):
    message = refused(tmp_path, params, {"train": train})
    assert "runs.t" in message and expected in message
