import copy as copy_module

import pytest
import torch

from chargpt.train.config import OptimizerConfig, ScheduleConfig
from chargpt.train.loop import scheduled_momentum
from chargpt.train.optimizers import build_optimizer
from chargpt.train.schedule import build_scheduler

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
    """(lr, momentum) at each step of the run's schedule (build_scheduler: 1cycle for these configs)."""
    return trace_scheduler(schedule, total, optimizer_name)[0]


@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
def test_onecycle_table(optimizer_name):
    cfg = ScheduleConfig(
        lr_min=1e-4,
        lr_max=0.1,
        momentum_max=0.9,
        momentum_min=0.8,
        pct_start=0.45,
        final_div_factor=10,
        anneal="linear",
    )
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


# The cosine control, 50 steps: warmup 10 steps to 1e-3 (reached at step 9), cosine to the floor 1e-4 at step 49
# (halfway, step 29: (1e-3 + 1e-4) / 2), beta1 held at 0.9.
COSINE = [
    (0, 1e-4),
    (1, 2e-4),
    (8, 9e-4),
    (9, 1e-3),
    (19, 1e-4 + 9e-4 * (1 + 2**-0.5) / 2),
    (29, 5.5e-4),
    (39, 1e-4 + 9e-4 * (1 - 2**-0.5) / 2),
    (49, 1e-4),
]


def trace_scheduler(schedule: ScheduleConfig, total: int, optimizer_name: str = "adamw"):
    model = torch.nn.Linear(4, 4)
    opt = build_optimizer(
        model, OptimizerConfig(name=optimizer_name), lr=schedule.lr_min, momentum=schedule.momentum_max
    )
    sched = build_scheduler(opt, schedule, lr_max=schedule.lr_max, total_steps=total)
    seen = []
    for step in range(total):
        seen.append((opt.param_groups[0]["lr"], scheduled_momentum(opt.param_groups[0])))
        opt.step()
        if step + 1 < total:
            sched.step()
    return seen, opt, sched


def test_cosine_control_table():
    cfg = ScheduleConfig(name="cosine", lr_min=1e-4, lr_max=1e-3, warmup_steps=10, momentum_max=0.9)
    seen, _, _ = trace_scheduler(cfg, 50)
    for step, lr in COSINE:
        assert seen[step][0] == pytest.approx(lr, rel=1e-9), f"lr at step {step}"
    assert {m for _, m in seen} == {0.9}


def test_cosine_without_warmup_starts_at_the_peak():
    seen, _, _ = trace_scheduler(ScheduleConfig(name="cosine", lr_min=1e-4, lr_max=1e-3, warmup_steps=1), 50)
    assert seen[0][0] == pytest.approx(1e-3) and seen[-1][0] == pytest.approx(1e-4)


def test_two_phase_onecycle_anneals_to_lr_min_over_final_div_factor():
    cfg = ScheduleConfig(
        lr_min=1e-4, lr_max=1e-2, three_phase=False, pct_start=0.3, final_div_factor=10, anneal="linear"
    )
    seen, _, _ = trace_scheduler(cfg, 100)
    assert seen[0][0] == pytest.approx(1e-4) and seen[29][0] == pytest.approx(1e-2)  # peak at 0.3 * 100 - 1
    assert seen[29][1] == pytest.approx(0.8)
    assert seen[99][0] == pytest.approx(1e-5) and seen[99][1] == pytest.approx(0.9)


@pytest.mark.parametrize("name", ["onecycle", "cosine"])
def test_a_restored_scheduler_continues_the_same_table(name):
    """What a resumed run relies on: optimizer + scheduler state after 24 steps, loaded into a fresh pair."""
    cfg = ScheduleConfig(name=name, lr_min=1e-4, lr_max=1e-3, warmup_steps=10)
    full, _, _ = trace_scheduler(cfg, 60)
    opt = build_optimizer(torch.nn.Linear(4, 4), OptimizerConfig(name="adamw"), lr=1e-4, momentum=0.9)
    sched = build_scheduler(opt, cfg, lr_max=cfg.lr_max, total_steps=60)
    for _ in range(24):
        opt.step()
        sched.step()
    opt2 = build_optimizer(torch.nn.Linear(4, 4), OptimizerConfig(name="adamw"), lr=1e-4, momentum=0.9)
    sched2 = build_scheduler(opt2, cfg, lr_max=cfg.lr_max, total_steps=60)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    for step in range(24, 60):
        assert opt2.param_groups[0]["lr"] == pytest.approx(full[step][0], rel=1e-12), f"step {step}"
        opt2.step()
        if step + 1 < 60:
            sched2.step()


def test_three_phase_needs_pct_start_below_half():
    with pytest.raises(ValueError, match="pct_start: 0.6 must be below 0.5 with three_phase"):
        ScheduleConfig(pct_start=0.6)
    assert ScheduleConfig(pct_start=0.6, three_phase=False).pct_start == 0.6


def tiny_gpt(seed: int = 0):
    from chargpt.model.config import ModelConfig
    from chargpt.model.gpt import GPT

    torch.manual_seed(seed)
    return GPT(ModelConfig(n_layer=2, d_model=32, n_head=2, d_ff=64, context=16, dropout=0.0))


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = tiny_gpt()
    opt = build_optimizer(model, OptimizerConfig(name="muon", weight_decay=1e-4), lr=1e-4, momentum=0.9)
    muon_params = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    expected = {id(m.weight) for b in model.blocks for m in (b.attn.qkv, b.attn.proj, b.ff.up, b.ff.down)}
    assert muon_params == expected
    decayed, plain = opt.adamw.param_groups
    assert {id(p) for p in decayed["params"]} == {
        id(model.tok_emb.weight),
        id(model.head.weight),
        *(id(b.pos_emb.weight) for b in model.blocks),
    }
    assert (
        decayed["weight_decay"] == 1e-4 and plain["weight_decay"] == 0.0 and all(p.dim() == 1 for p in plain["params"])
    )
    assert opt.muon.param_groups[0]["weight_decay"] == 1e-4
    assert len(muon_params) + sum(len(g["params"]) for g in opt.adamw.param_groups) == len(list(model.parameters()))


def test_one_onecycle_drives_muon_and_adamw():
    """The 1cycle table reaches both halves: every group's LR, AdamW's beta1 and Muon's momentum."""
    model = tiny_gpt()
    cfg = ScheduleConfig(
        lr_min=1e-4,
        lr_max=0.1,
        momentum_max=0.9,
        momentum_min=0.8,
        pct_start=0.45,
        final_div_factor=10,
        anneal="linear",
    )
    opt = build_optimizer(model, OptimizerConfig(name="muon"), lr=cfg.lr_min, momentum=cfg.momentum_max)
    sched = build_scheduler(opt, cfg, lr_max=cfg.lr_max, total_steps=100)
    expected = {step: (lr, m) for step, lr, m in EXPECTED}
    x = torch.randint(0, 256, (2, 16))
    for step in range(100):
        if step in expected:
            lr, momentum = expected[step]
            assert all(g["lr"] == pytest.approx(lr) for g in opt.muon.param_groups + opt.adamw.param_groups)
            assert opt.adamw.param_groups[0]["betas"][0] == pytest.approx(momentum)
        if step < 3:  # a few real steps: Muon's momentum is read from the cycled beta1 at each one
            model(x, x)[1].backward()
        opt.step()
        if step in expected:
            assert opt.muon.param_groups[0]["momentum"] == pytest.approx(expected[step][1]), f"step {step}"
        opt.zero_grad()
        if step + 1 < 100:
            sched.step()


def test_a_restored_muon_run_continues_bit_for_bit():
    def steps(model, opt, n, seed):
        gen = torch.Generator().manual_seed(seed)
        for _ in range(n):
            x = torch.randint(0, 256, (2, 16), generator=gen)
            model(x, x)[1].backward()
            opt.step()
            opt.zero_grad()

    cfg = OptimizerConfig(name="muon", weight_decay=1e-2)
    model = tiny_gpt()
    opt = build_optimizer(model, cfg, lr=1e-2, momentum=0.9)
    steps(model, opt, 4, seed=1)
    copy = tiny_gpt(seed=5)
    copy.load_state_dict(model.state_dict())
    opt2 = build_optimizer(copy, cfg, lr=1e-3, momentum=0.5)
    opt2.load_state_dict(copy_module.deepcopy(opt.state_dict()))  # as through a checkpoint file: no shared tensors
    assert opt2.param_groups[0]["lr"] == 1e-2 and opt2.param_groups[-1]["betas"][0] == 0.9
    steps(model, opt, 3, seed=2)
    steps(copy, opt2, 3, seed=2)
    for a, b in zip(model.parameters(), copy.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_muon_optimizer_refuses_another_optimizers_state():
    adamw = build_optimizer(tiny_gpt(), OptimizerConfig(name="adamw"), lr=1e-3, momentum=0.9)
    muon = build_optimizer(tiny_gpt(), OptimizerConfig(name="muon"), lr=1e-3, momentum=0.9)
    with pytest.raises(
        ValueError, match="not a MuonWithAdamW state .keys \\['param_groups', 'state'\\].*optimizer.name"
    ):
        muon.load_state_dict(adamw.state_dict())


def test_tied_embeddings_are_decayed_once_and_left_to_adamw_under_muon():
    from chargpt.model.config import ModelConfig
    from chargpt.model.gpt import GPT

    model = GPT(ModelConfig(n_layer=2, d_model=32, n_head=2, d_ff=64, context=16, bias=False, tie_embeddings=True))
    sgd = build_optimizer(model, OptimizerConfig(name="sgd", weight_decay=1e-5), lr=0.1, momentum=0.9)
    decayed, plain = sgd.param_groups
    ids = [id(p) for p in decayed["params"]]
    assert ids.count(id(model.tok_emb.weight)) == 1 and len(ids) == len(set(ids))
    assert all(p.dim() == 1 for p in plain["params"]) and len(plain["params"]) == 2 * 2 * 2 + 2  # LayerNorms only
    muon = build_optimizer(model, OptimizerConfig(name="muon", weight_decay=1e-5), lr=0.1, momentum=0.9)
    muon_ids = {id(p) for g in muon.muon.param_groups for p in g["params"]}
    adamw_ids = [id(p) for g in muon.adamw.param_groups for p in g["params"]]
    assert id(model.tok_emb.weight) not in muon_ids and adamw_ids.count(id(model.tok_emb.weight)) == 1
    assert len(muon_ids) + len(adamw_ids) == len(list(model.parameters()))


# The seed's 1cycle over 100 steps: torch's two-phase form with pct_start 0.5 and final_div_factor 1, i.e. LR
# 1e-4 -> 0.1 linearly until step 49 (0.5 * 100 - 1), then back to 1e-4 at step 99; momentum 0.9 -> 0.8 -> 0.9;
# no annihilation phase.
SEED_TABLE = [
    (0, 1e-4, 0.9),
    (24, 1e-4 + (0.1 - 1e-4) * 24 / 49, 0.9 - 0.1 * 24 / 49),
    (49, 0.1, 0.8),
    (74, 0.1 - (0.1 - 1e-4) * 25 / 50, 0.8 + 0.1 * 25 / 50),
    (99, 1e-4, 0.9),
]


def test_the_seeds_schedule_is_two_equal_linear_ramps_with_no_annihilation(params):
    from chargpt.pipeline.config import resolve_run

    cfg = resolve_run(params, "final").schedule
    seen = trace("sgd", cfg, 100)
    for step, lr, momentum in SEED_TABLE:
        assert seen[step][0] == pytest.approx(lr, rel=1e-9), f"lr at step {step}"
        assert seen[step][1] == pytest.approx(momentum, rel=1e-9), f"momentum at step {step}"
    lrs = [lr for lr, _ in seen]
    ups, downs = lrs[:50], lrs[49:]
    assert all(b > a for a, b in zip(ups, ups[1:])) and all(b < a for a, b in zip(downs, downs[1:]))
    assert min(lrs) == pytest.approx(1e-4)  # never below the start: no final phase
