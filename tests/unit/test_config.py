import itertools
import re

import pytest
import yaml
from conftest import REPO

from chargpt.errors import ConfigError
from chargpt.pipeline.config import RunConfig, load_params, resolve_run, run_sources


def test_every_named_run_in_params_yaml_is_valid(params):
    sources = run_sources(params)
    assert set(params["runs"]) <= set(sources) and len(sources) > len(params["runs"])  # the grid's runs too
    for run in sources:
        assert isinstance(resolve_run(params, run), RunConfig)


def test_a_grid_names_a_run_for_every_combination_of_its_axes(params):
    grid = params["grids"]["grid"]
    labels = [[f"{axis}{label}" for label in spec["values"]] for axis, spec in grid["axes"].items()]
    expected = {"_".join(["grid", *combination]) for combination in itertools.product(*labels)}
    grid_runs = {name for name, s in run_sources(params).items() if s.own_key == "grids.grid"}
    assert grid_runs == expected and len(expected) == 8
    for name in expected:  # each is the base run with its axes' values, and nothing else
        cfg, base = resolve_run(params, name).model_dump(), resolve_run(params, grid["base"]).model_dump()
        for axis, spec in grid["axes"].items():
            section, key = spec["key"].split(".")
            label = next(part for part in name.split("_") if part.startswith(axis)).removeprefix(axis)
            assert cfg[section].pop(key) == spec["values"][label]
            base[section].pop(key)
        assert cfg == base | {"name": name}


def test_a_run_builds_on_its_base_and_changes_only_what_it_states(params):
    params["runs"]["variant"] = {"base": "quickstart_adamw", "train": {"iterations": 7}}
    variant, base = resolve_run(params, "variant"), resolve_run(params, "quickstart_adamw")
    assert variant.train.iterations == 7 and variant.model == base.model and variant.eval == base.eval
    assert variant.train.model_copy(update={"iterations": base.train.iterations}) == base.train


@pytest.mark.parametrize(
    "runs, expected",
    [
        ({"variant": {"base": "nope"}}, "runs.variant.base: 'nope' is not another run"),
        ({"variant": {"base": "variant"}}, "runs.variant.base: 'variant' is not another run"),
        ({"variant": {"base": "loop"}, "loop": {"base": "variant"}},
         "runs.loop.base: 'variant' closes a loop of bases (variant -> loop -> variant)"),
        ({"variant": {"base": "v2"}, "v2": {"base": "quickstart"}},
         "runs.variant.base: a chain of 4 runs (variant -> v2 -> quickstart -> quickstart_adamw); at most 3"),
    ],
)  # fmt: skip
def test_a_base_must_be_another_run_in_a_short_chain(params, runs, expected):
    params["runs"].update(runs)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        run_sources(params)


def test_a_variant_of_the_quickstart_builds_on_its_whole_chain(params):
    """The README's recipe: `base: quickstart` (itself on quickstart_adamw) and a few keys."""
    params["runs"]["variant"] = {"base": "quickstart", "train": {"iterations": 1000}}
    source = run_sources(params)["variant"]
    assert (source.own_key, source.base_key, source.root_key) == ("runs.variant", "runs.quickstart",
                                                                 "runs.quickstart_adamw")  # fmt: skip
    variant, quickstart = resolve_run(params, "variant"), resolve_run(params, "quickstart")
    assert variant.train.iterations == 1000 and variant.optimizer == quickstart.optimizer  # muon, from quickstart
    assert variant.model == quickstart.model and variant.train.log_interval == 10  # from quickstart_adamw
    params["runs"]["quickstart"]["optimizer"]["muon_ns_dtype"] = "fp64"  # an error names the layer that set it
    with pytest.raises(ConfigError, match=re.escape("runs.quickstart.optimizer.muon_ns_dtype")):
        resolve_run(params, "variant")


def test_an_error_names_the_key_where_the_value_is_written(params):
    params["runs"]["variant"] = {"base": "quickstart_adamw", "schedule": {"lr_min": 0.5, "lr_max": 0.1}}
    with pytest.raises(ConfigError) as err:
        resolve_run(params, "variant")
    assert str(err.value) == "params.yaml: run 'variant': runs.variant.schedule.lr_min: 0.5 must be below lr_max (0.1)"
    params["runs"]["quickstart_adamw"]["model"]["n_head"] = 5  # set in the base: every run on it names the base
    with pytest.raises(
        ConfigError,
        match=re.escape("run 'quickstart': runs.quickstart_adamw.model.n_head: 5 must divide d_model (128)"),
    ):
        resolve_run(params, "quickstart")
    params["grids"]["grid"]["axes"]["mom"]["values"]["090"] = 1.5  # and a grid's value, where it is written
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "grids.grid.axes.mom.values.090 (schedule.momentum_max): Input should be less than 1 (got 1.5)"
        ),
    ):
        resolve_run(params, "grid_min1e-3_mom090_wd1e-4")


# The seed's final model, fact for fact (../shared/seed-facts.md; its repository's README.md and train.py).
SEED_FINAL = {
    "model": {
        "n_layer": 12,
        "d_model": 512,
        "n_head": 2,
        "d_ff": 2048,
        "context": 512,
        "dropout": 0.2,
        "bias": False,
        "tie_embeddings": True,
        "vocab_size": 256,
    },
    "optimizer": {"name": "sgd", "nesterov": False, "weight_decay": 1e-5, "grad_clip": 0.0},
    "schedule": {
        "name": "onecycle",
        "lr_min": 1e-4,
        "lr_max": 0.1,
        "momentum_max": 0.9,
        "momentum_min": 0.8,
        "three_phase": False,
        "pct_start": 0.5,
        "final_div_factor": 1.0,
        "anneal": "linear",
    },
    "lr_range_test": {"method": "linear_accuracy"},
    "train": {"batch_size": 16, "iterations": 48000, "checkpoint_every": 800},
    "eval": {"stride": 1},
}


def test_final_run_is_the_seeds_final_model(params):
    cfg = resolve_run(params, "final").model_dump()
    for section, values in SEED_FINAL.items():
        assert {key: cfg[section][key] for key in values} == values, section


def test_the_seeds_other_runs_and_the_t12_run(params):
    final = resolve_run(params, "final").model_dump()

    def differences(run: str) -> dict:
        cfg = resolve_run(params, run).model_dump()
        return {f"{s}.{k}": v for s in cfg if s != "name" for k, v in cfg[s].items() if final[s][k] != v}

    assert differences("wd_1e-4") == {"optimizer.weight_decay": 1e-4, "train.iterations": 36000}
    assert differences("wd_1e-6") == {"optimizer.weight_decay": 1e-6, "train.iterations": 24000}
    for run, name in (("final_adamw", "adamw"), ("final_muon", "muon")):  # only the optimizer and its LR
        changed = differences(run)
        assert changed.pop("optimizer.name") == name and changed.pop("schedule.lr_max") == "auto"
        assert {k.split(".")[0] for k in changed} == {"lr_range_test"}
    for name in (n for n in run_sources(params) if n.startswith("grid_")):  # the early runs, on final
        assert set(differences(name)) <= {"schedule.lr_min", "schedule.momentum_max", "optimizer.weight_decay"}
    t12 = resolve_run(params, "t12")  # chargpt's final before: Al-Rfou's heads and dropout, the code's defaults
    assert (t12.model.n_head, t12.model.dropout, t12.model.bias, t12.model.tie_embeddings) == (8, 0.1, True, False)
    assert t12.model_dump(exclude={"name"}) == RunConfig(name="t12").model_dump(exclude={"name"}) | {
        "data": t12.data.model_dump()
    }


def test_the_cpu_seed_recipe_is_the_seeds_at_the_quickstarts_size(params):
    seed, quickstart = resolve_run(params, "quickstart_seed"), resolve_run(params, "quickstart_adamw")
    assert (
        seed.model.model_copy(update={"n_head": 4, "dropout": 0.0, "bias": True, "tie_embeddings": False})
        == quickstart.model
    )
    for section in ("optimizer", "schedule"):
        got = getattr(seed, section).model_dump()
        assert {k: got[k] for k in SEED_FINAL[section] if k != "lr_max"} == {
            k: v for k, v in SEED_FINAL[section].items() if k != "lr_max"
        }
    assert seed.lr_range_test.method == "linear_accuracy" and seed.schedule.lr_max == "auto"
    assert seed.train.iterations == 1800 and seed.train.precision == "fp32"  # the quickstart's budget, pinned fp32


def test_ablations_override_only_what_they_name(params):
    assert resolve_run(params, "wd_1e-4").train.iterations == 36000
    assert resolve_run(params, "wd_1e-4").optimizer.weight_decay == 1e-4
    assert resolve_run(params, "wd_1e-6").train.iterations == 24000


def test_linear_accuracy_needs_three_accuracy_points_and_ordered_fractions(params):
    params["runs"]["final"]["lr_range_test"].update(iterations=40, eval_interval=20)
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "runs.final.lr_range_test.eval_interval: 20 gives 2 accuracy "
            "point(s) over 40 iterations; linear_accuracy needs at least 3"
        ),
    ):
        resolve_run(params, "final")
    params["runs"]["final"]["lr_range_test"].update(iterations=1000, rise_fraction=0.9, flat_fraction=0.5)
    with pytest.raises(ConfigError, match="rise_fraction: 0.9 must be below flat_fraction"):
        resolve_run(params, "final")


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda p: p["model"].update(n_layr=3), "model.n_layr: unknown key"),
        (lambda p: p["model"].update(n_layer="twelve"), "model.n_layer"),
        (lambda p: p["model"].update(n_head=7), "model.n_head: 7 must divide d_model (512)"),
        (lambda p: p["optimizer"].update(weight_decay=-1), "optimizer.weight_decay"),
        (lambda p: p["optimizer"].update(name="adam"), "optimizer.name"),
        (lambda p: p["schedule"].update(lr_min=0.5), "schedule.lr_min: 0.5 must be below lr_max (0.1)"),
        (lambda p: p["schedule"].update(lr_max="max"), "schedule.lr_max"),
        (lambda p: p["data"].update(split=[0.9, 0.05, 0.1]), "data.split: fractions must sum to 1"),
        (lambda p: p["data"].update(checksums={"sha256": "abc"}), "data.checksums.sha256"),
        (
            lambda p: p["runs"]["t12"].update(model={"context": 0}),
            "runs.t12.model.context: Input should be greater than 0 (got 0)",
        ),
        (lambda p: p["runs"]["t12"].update(modle={}), "unknown section(s) ['modle']"),
        # a run named before its base, whose base is no mapping (found by tests/unit/test_config_fuzz.py)
        (lambda p: p["runs"].update(quickstart_adamw=True), "runs.quickstart_adamw: expected a mapping of sections"),
        (lambda p: p["runs"]["t12"].update(data={"url": "x"}), "runs.t12.data: the corpus and its split are shared"),
        (lambda p: p["eval"].update(stride=10_000), "eval.stride: 10000 must not exceed model.context (512)"),
        (
            lambda p: p["runs"]["t12"].update(model={"n_layer": 1}, train={"aux_losses": True}),
            "runs.t12.train.aux_losses: needs intermediate layers, and model.n_layer is 1",
        ),
    ],
)
def test_invalid_params_name_the_key(params, mutate, expected):
    mutate(params)
    with pytest.raises(ConfigError, match=None) as err:
        resolve_run(params, "t12")
    assert expected in str(err.value)


def test_undefined_run_lists_the_defined_ones(params):
    with pytest.raises(ConfigError, match=r"run 'finale' is not defined under runs or grids; defined: \["):
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


def test_a_key_stated_twice_is_refused_naming_it_and_both_lines(tmp_path):
    """PyYAML keeps the last of two equal keys silently (a run would lose half its overrides), DVC refuses the file:
    both params.yaml readers refuse it, naming the key."""
    from chargpt.data.config import load_data_config

    repo_params = (REPO / "params.yaml").read_text()
    load_params(REPO / "params.yaml")  # the shipped file states each key once
    path = tmp_path / "params.yaml"
    path.write_text(repo_params.replace("  quickstart_classic:\n", "  quickstart_classic:\n    train: {seed: 1}\n", 1))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text == "    train: {seed: 1}")
    expected = rf"not valid YAML: .*found duplicate key 'train' \(first at line {line}\)"
    for read in (load_params, load_data_config):
        with pytest.raises(ConfigError, match=expected):
            read(path)


def alias_chain(depth: int = 9, width: int = 9) -> str:
    """About 500 bytes of YAML whose last anchor expands to width**depth values (9**9: 387 million)."""
    lines = ["a0: &a0 [0]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, depth + 1)]
    return "\n".join(lines)


def test_an_alias_chain_is_refused_at_once_naming_its_line(tmp_path):
    """A chain of aliases took `chargpt check` 42 s to expand into its message. Aliases are counted as they would
    expand, each shared node once: past 100,000 values the file is refused, naming the alias where it overflowed, in
    time bounded by the file's size."""
    import time

    from chargpt.cli import main
    from chargpt.data.config import load_data_config

    path = tmp_path / "params.yaml"
    text = (REPO / "params.yaml").read_text()
    path.write_text(text.replace("  quickstart_classic:\n", "  quickstart_classic:\n    train: {target_bpc: *a9}\n", 1)
                    .replace("runs:\n", alias_chain() + "\nruns:\n", 1))  # fmt: skip
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.startswith("a5: "))
    start = time.perf_counter()
    for read in (load_params, load_data_config):
        with pytest.raises(ConfigError, match=rf"its aliases expand it to more than 100,000 values.* line {line},"):
            read(path)
    for command in ("check", "sync-dvc"):
        with pytest.raises(SystemExit, match=r"its aliases expand it to more than 100,000 values"):
            main([command, "--params", str(path)] + (["--check"] if command == "sync-dvc" else []))
    assert time.perf_counter() - start < 5


def test_aliases_as_pyyaml_writes_them_are_read_and_a_recursive_or_too_deep_one_is_refused(params, tmp_path):
    """yaml.safe_dump writes an anchor for a value used twice (a script's shared dict): such a file reads as the
    same runs. An alias inside the value it names, or nesting past the parser's depth, is one line."""
    shared = {"n_layer": 2, "d_model": 32, "n_head": 2, "d_ff": 64}
    params["runs"]["a"] = {"base": "quickstart", "model": shared}
    params["runs"]["b"] = {"base": "quickstart", "model": shared}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    assert "*id001" in path.read_text()
    loaded = load_params(path)
    assert resolve_run(loaded, "b").model == resolve_run(params, "a").model
    path.write_text("data: {}\nruns: &r {x: [1, *r]}\n")
    with pytest.raises(ConfigError, match=r"found an alias inside the value it names .* line 2"):
        load_params(path)
    path.write_text("runs: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply to read"):
        load_params(path)


def test_a_refused_value_is_quoted_by_a_short_prefix(params):
    """The message shows the start of a bad value, never its whole text (a long list, a deep mapping)."""
    params["runs"]["quickstart"]["train"]["iterations"] = [list(range(10_000))] * 1_000
    with pytest.raises(ConfigError) as refused:
        resolve_run(params, "quickstart")
    message = str(refused.value)
    assert "runs.quickstart.train.iterations: " in message and "(got [[0, 1, 2, 3, ...], " in message
    assert len(message) < 400, message


def test_a_context_longer_than_the_training_split_is_refused(params):
    from chargpt.pipeline.stage import check_fits

    cfg = resolve_run(params, "final")  # context 512
    meta = {"splits": {"train": {"bytes": 500}, "val": {"bytes": 30}, "test": {"bytes": 30}}}
    with pytest.raises(ConfigError, match=r"model.context \(512\) needs a train split of at least 513 bytes"):
        check_fits(cfg.name, cfg.model.context, meta)
    meta["splits"]["train"]["bytes"] = 513
    check_fits(cfg.name, cfg.model.context, meta)


def test_lr_range_test_smoothing_must_be_short_against_the_sweep(params):
    params["lr_range_test"].update(iterations=60, smoothing=0.98)
    with pytest.raises(
        ConfigError, match=r"lr_range_test.smoothing: 0.98 averages over ~50 steps, more than half of iterations \(60\)"
    ):
        resolve_run(params, "t12")


def test_overrides_apply_and_validate(params):
    from chargpt.pipeline.config import with_overrides

    base = resolve_run(params, "quickstart")
    cfg = with_overrides(
        base,
        [
            "model.d_model=64",
            "model.d_ff=128",
            "schedule.name=cosine",
            "schedule.lr_max=2e-3",
            "train.target_bpc=[3.0, 2.5]",
        ],
    )
    assert (cfg.model.d_model, cfg.schedule.name, cfg.schedule.lr_max, cfg.train.target_bpc) == (
        64,
        "cosine",
        2e-3,
        [3.0, 2.5],
    )
    assert cfg.model.n_layer == base.model.n_layer  # untouched keys stay
    for bad, message in [
        (["model.n_layr=3"], "model.n_layr: unknown key"),
        (["modelx.d=1"], "expected section.key=value"),
        (["model.n_head=7"], "model.n_head: 7 must divide d_model"),
        (["data.url=x"], "expected section.key"),
        (["schedule.name=cosine", "schedule.warmup_steps=5000"], "schedule.warmup_steps: 5000 must be below"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            with_overrides(base, bad)


def test_params_yaml_states_every_default_as_the_code_has_it(params):
    """Every key of every section is in params.yaml, with the code's default: DVC tracks what params.yaml says, so a
    default that lived only in the code would be invisible to `dvc status`."""
    from chargpt.data.config import DataConfig
    from chargpt.pipeline.config import RUN_SECTIONS, RunConfig

    for section in ("data", *RUN_SECTIONS):
        model = DataConfig() if section == "data" else RunConfig.model_fields[section].default
        assert params[section] == model.model_dump(mode="json"), section


def test_a_batch_must_split_over_the_processes_and_micro_batches(params):
    """One check (TrainConfig.accumulation_steps), at load against train.nproc and at build against torchrun's world."""
    params["runs"]["variant"] = {"base": "quickstart", "train": {"batch_size": 16, "nproc": 3}}
    with pytest.raises(ConfigError, match=re.escape("train.batch_size: 16 does not split into 3 process(es)")):
        resolve_run(params, "variant")
    params["runs"]["variant"]["train"] = {"batch_size": 16, "nproc": 2, "micro_batch_size": 3}
    with pytest.raises(ConfigError, match=re.escape("process(es) x micro-batches of 3 sequences")):
        resolve_run(params, "variant")
    params["runs"]["variant"]["train"] = {"batch_size": 16, "nproc": 2, "micro_batch_size": 4}
    assert resolve_run(params, "variant").train.accumulation_steps(2) == 2
