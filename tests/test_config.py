import re

import pytest

from chargpt.config import ConfigError, RunConfig, load_params, resolve_run

ALL_RUNS = ["final", "wd_1e-4", "wd_1e-6", "quickstart", "quickstart_cosine", "quickstart_half", "quickstart_muon",
            "quickstart_aux", "quickstart_2phase_mom090", "quickstart_sgd", "quickstart_sgd_fixed",
            "quickstart_wd_1e-5", "quickstart_adamw"] + [
    f"grid_min{lr}_mom{m}_wd{wd}" for lr in ("1e-3", "1e-4") for m in ("090", "095") for wd in ("1e-4", "1e-6")]


def test_every_named_run_in_params_yaml_is_valid(params):
    assert sorted(params["runs"]) == sorted(ALL_RUNS)
    for run in ALL_RUNS:
        assert isinstance(resolve_run(params, run), RunConfig)


def test_final_run_is_the_seed_recipe(params):
    cfg = resolve_run(params, "final")
    assert (cfg.model.n_layer, cfg.model.d_model, cfg.model.n_head, cfg.model.d_ff, cfg.model.context) == (12, 512, 8, 2048, 512)
    assert (cfg.schedule.lr_min, cfg.schedule.lr_max) == (1e-4, 0.1)
    assert (cfg.schedule.momentum_max, cfg.schedule.momentum_min) == (0.9, 0.8)
    assert cfg.optimizer.name == "sgd" and cfg.optimizer.weight_decay == 1e-5


def test_ablations_override_only_what_they_name(params):
    assert resolve_run(params, "wd_1e-4").train.iterations == 36000
    assert resolve_run(params, "wd_1e-4").optimizer.weight_decay == 1e-4
    assert resolve_run(params, "wd_1e-6").train.iterations == 24000
    grid = resolve_run(params, "grid_min1e-3_mom095_wd1e-6")
    assert (grid.schedule.lr_min, grid.schedule.momentum_max, grid.optimizer.weight_decay) == (1e-3, 0.95, 1e-6)
    assert grid.model == resolve_run(params, "final").model


@pytest.mark.parametrize("mutate, expected", [
    (lambda p: p["model"].update(n_layr=3), "model.n_layr: unknown key"),
    (lambda p: p["model"].update(n_layer="twelve"), "model.n_layer"),
    (lambda p: p["model"].update(n_head=7), "n_head (7) must divide d_model (512)"),
    (lambda p: p["optimizer"].update(weight_decay=-1), "optimizer.weight_decay"),
    (lambda p: p["optimizer"].update(name="adam"), "optimizer.name"),
    (lambda p: p["schedule"].update(lr_min=0.5), "lr_min (0.5) must be below lr_max (0.1)"),
    (lambda p: p["schedule"].update(lr_max="max"), "schedule.lr_max"),
    (lambda p: p["data"].update(split=[0.9, 0.05, 0.1]), "split fractions must sum to 1"),
    (lambda p: p["data"].update(checksums={"sha256": "abc"}), "data.checksums.sha256"),
    (lambda p: p["runs"]["final"].update(model={"context": 0}), "model.context"),
    (lambda p: p["runs"]["final"].update(modle={}), "unknown section(s) ['modle']"),
    (lambda p: p["runs"]["final"].update(data={"url": "x"}), "runs.final.data: the corpus and its split are shared"),
    (lambda p: p["eval"].update(stride=10_000), "eval.stride (10000) must not exceed model.context (512)"),
    (lambda p: p["runs"]["final"].update(model={"n_layer": 1}, train={"aux_losses": True}),
     "train.aux_losses needs intermediate layers: model.n_layer is 1"),
])
def test_invalid_params_name_the_key(params, mutate, expected):
    mutate(params)
    with pytest.raises(ConfigError, match=None) as err:
        resolve_run(params, "final")
    assert expected in str(err.value)


def test_undefined_run_lists_the_defined_ones(params):
    with pytest.raises(ConfigError, match=r"run 'finale' is not defined under runs; defined: \["):
        resolve_run(params, "finale")


def test_missing_and_unknown_sections(tmp_path, params):
    path = tmp_path / "params.yaml"
    import yaml

    del params["eval"]
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r"missing section\(s\) \['eval'\]"):
        load_params(path)
    params["eval"], params["evals"] = {}, {}
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r"unknown top-level key\(s\) \['evals'\]"):
        load_params(path)
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "nope.yaml")


def test_a_context_longer_than_the_training_split_is_refused(params):
    from chargpt.runtime import check_fits

    cfg = resolve_run(params, "final")  # context 512
    meta = {"splits": {"train": {"bytes": 500}, "val": {"bytes": 30}, "test": {"bytes": 30}}}
    with pytest.raises(ConfigError, match=r"model.context \(512\) needs a train split of at least 513 bytes"):
        check_fits(cfg, meta)
    meta["splits"]["train"]["bytes"] = 513
    check_fits(cfg, meta)


def test_lr_range_test_smoothing_must_be_short_against_the_sweep(params):
    params["lr_range_test"].update(iterations=60, smoothing=0.98)
    with pytest.raises(ConfigError, match=r"lr_range_test: .*smoothing 0.98 averages over ~50 steps, more than half of iterations \(60\)"):
        resolve_run(params, "final")


def test_overrides_apply_and_validate(params):
    from chargpt.config import with_overrides

    base = resolve_run(params, "quickstart")
    cfg = with_overrides(base, ["model.d_model=64", "model.d_ff=128", "schedule.name=cosine", "schedule.lr_max=2e-3",
                                "train.target_bpc=[3.0, 2.5]"])
    assert (cfg.model.d_model, cfg.schedule.name, cfg.schedule.lr_max, cfg.train.target_bpc) == (64, "cosine", 2e-3, [3.0, 2.5])
    assert cfg.model.n_layer == base.model.n_layer  # untouched keys stay
    for bad, message in [(["model.n_layr=3"], "model.n_layr: unknown key"), (["modelx.d=1"], "expected section.key=value"),
                         (["model.n_head=7"], "n_head (7) must divide d_model"), (["data.url=x"], "expected section.key"),
                         (["schedule.name=cosine", "schedule.warmup_steps=5000"], "warmup_steps (5000) must be below")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            with_overrides(base, bad)
