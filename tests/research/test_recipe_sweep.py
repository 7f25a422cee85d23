"""research/recipe_sweep.py, the recipe search's tool: it trains each variant through the stage functions, and its
tables read the records it writes. Its grids stay valid for the runs they vary."""

import json
import subprocess
import sys

import yaml
from conftest import REPO, TINY_RUN, params_with_runs, tiny_text

from chargpt.data.corpus import split_corpus
from chargpt.io import write_json
from chargpt.model.gpt import GPT
from chargpt.pipeline.config import load_run_config, with_overrides


def sweep_tables():
    """research/recipe_sweep.py as a module: its table functions (--summarize), called in this process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("recipe_sweep", REPO / "research/recipe_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_sweep_trains_variants_and_its_tables_read_them(tmp_path):
    params = params_with_runs({"tiny": {**TINY_RUN, "schedule": {"lr_min": 1.0e-4, "lr_max": 3.0e-3}}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "corpus.bin").write_bytes(tiny_text(40_000))
    meta = split_corpus(tmp_path / "corpus.bin", tmp_path / "data", (0.9, 0.05, 0.05))
    write_json(tmp_path / "data/meta.json", meta)  # a preprocess output, as the stages read it
    (tmp_path / "grid.yaml").write_text(
        yaml.safe_dump(
            [
                {"name": "s_1cycle_lr3e-3", "set": []},
                {"name": "s_cosine_lr3e-3", "set": ["schedule.name=cosine", "schedule.warmup_steps=5"]},
                {"name": "s_1cycle_muon_aux_lr3e-3", "set": ["optimizer.name=muon", "train.aux_losses=true"]},
                {"name": "broken", "set": ["schedule.lr_max=1e9"]},
                {"name": "left_out", "set": []},  # not matched by --match: never runs
            ]
        )
    )  # diverges: recorded, the others still run
    sweep = [sys.executable, str(REPO / "research/recipe_sweep.py")]
    proc = subprocess.run(
        [
            *sweep,
            "--params",
            str(tmp_path / "params.yaml"),
            "--run",
            "tiny",
            "--grid",
            str(tmp_path / "grid.yaml"),
            "--data-dir",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "out.jsonl"),
            "--set",
            "train.checkpoint_every=0",
            "--match",
            "^(s_|broken)",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = {r["name"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert "DivergedError" in results["broken"]["error"] and "left_out" not in results
    n_params = GPT(load_run_config("tiny", tmp_path / "params.yaml").model).num_params()
    for name in ("s_1cycle_lr3e-3", "s_cosine_lr3e-3", "s_1cycle_muon_aux_lr3e-3"):
        assert results[name]["iterations"] == 30 and 0 < results[name]["test_bpc"] < 8
        assert results[name]["n_params"] == n_params and results[name]["lr_max"] == 3.0e-3
        assert [p["step"] for p in results[name]["curve"] if "val_probe_bpc" in p] == [10, 20, 30]

    tables = sweep_tables()  # what --summarize prints (--versus-control: the second), read in this process
    table = tables.summarize([str(tmp_path / "out.jsonl")])
    best = min(("s_1cycle_lr3e-3", "s_cosine_lr3e-3"), key=lambda n: results[n]["test_bpc"])
    assert table.splitlines()[2].startswith(f"| {best} | 30 |") and "broken" in table.splitlines()[-1]
    versus = tables.versus_control([str(tmp_path / "out.jsonl")]).splitlines()
    assert len(versus) == 3 and versus[2].startswith("| s | 30 | ")


def test_every_shipped_sweep_grid_is_valid_for_its_run():
    """A config change must not leave a grid that fails on the GPU, after minutes of set-up."""

    grids = sorted((REPO / "research/grids").glob("*.yaml"))
    assert grids
    # The run each grid varies, as bench/gpu_check.sh passes it (--run); the rest vary quickstart_adamw.
    runs = {"t12_recipes.yaml": "t12", "seed_final_recipes.yaml": "final", "precision_numerics.yaml": "quickstart",
            "modern_cpu_combined.yaml": "quickstart_classic", "modern_cpu_shape.yaml": "quickstart",
            "modern_cpu_bf16.yaml": "quickstart", "modern_cpu_bf16_training.yaml": "quickstart"}  # fmt: skip
    script = (REPO / "bench/gpu_check.sh").read_text()
    for grid in ("t12_recipes.yaml", "seed_final_recipes.yaml"):
        assert f"--run {runs[grid]} --grid research/grids/{grid}" in script
    for grid in grids:
        base = load_run_config(runs.get(grid.name, "quickstart_adamw"), REPO / "params.yaml")
        for variant in yaml.safe_load(grid.read_text()):
            with_overrides(base, variant["set"])


def test_recipe_sweep_at_equal_seconds_gives_each_variant_the_steps_its_timed_step_fits(tmp_path):
    params = params_with_runs({"tiny": {**TINY_RUN, "schedule": {"lr_min": 1.0e-4, "lr_max": 3.0e-3}}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "corpus.bin").write_bytes(tiny_text(40_000))
    write_json(tmp_path / "data/meta.json", split_corpus(tmp_path / "corpus.bin", tmp_path / "data", (0.9, 0.05, 0.05)))
    # the second variant's step costs far more (4x as wide): it gets fewer steps in the same seconds
    grid = [{"name": "plain", "set": []}, {"name": "wide", "set": ["model.d_model=128", "model.d_ff=1024"]}]
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    sweep = [sys.executable, str(REPO / "research/recipe_sweep.py")]
    proc = subprocess.run(
        [*sweep, "--params", str(tmp_path / "params.yaml"), "--run", "tiny", "--grid", str(tmp_path / "grid.yaml"),
         "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out.jsonl"), "--equal-seconds", "0.75",
         "--set", "train.checkpoint_every=0", "--set", "train.eval_interval=1000"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = {r["name"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    for r in results.values():
        assert r["iterations"] == max(1, round(0.75 / r["measured_step_seconds"]))
    assert results["wide"]["measured_step_seconds"] > results["plain"]["measured_step_seconds"]
    assert results["wide"]["iterations"] < results["plain"]["iterations"]
    table = sweep_tables().against_table([str(tmp_path / "out.jsonl")], "plain", None).splitlines()
    assert table[0].startswith("| variant | steps | ms/step timed |") and table[2].startswith("| plain | ")
    assert "| +0.00000 |" in table[2] and len(table) == 4


def test_the_seed_means_pair_each_second_seed_with_the_baselines_second_seed():
    results = {
        "base": {"name": "base", "val_bpc": 2.0, "test_bpc": 2.1},
        "base_seed2": {"name": "base_seed2", "val_bpc": 2.02, "test_bpc": 2.05},
        "x": {"name": "x", "val_bpc": 1.99, "test_bpc": 2.08},
        "x_seed2": {"name": "x_seed2", "val_bpc": 1.97, "test_bpc": 2.06},
        "y": {"name": "y", "val_bpc": 1.9, "test_bpc": 2.0},  # one seed: no mean
    }
    rows = sweep_tables().seed_means(results, "base")
    assert rows == [
        {"name": "base (2 seeds)", "val_bpc_mean": 2.01, "val_bpc_vs_base_mean": 0.0, "test_bpc_mean": 2.075,
         "test_bpc_vs_base_mean": 0.0},
        {"name": "x (2 seeds)", "val_bpc_mean": 1.98, "val_bpc_vs_base_mean": -0.03, "test_bpc_mean": 2.07,
         "test_bpc_vs_base_mean": -0.005},
    ]  # fmt: skip
