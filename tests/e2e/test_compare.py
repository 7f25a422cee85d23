import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO

from chargpt.tracking import compare


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A SQLite MLflow store with four named runs, an older attempt of one, and a nested LR range test. Three were
    evaluated before the reference figure existed (final in consecutive windows, wd_1e-4 in sliding ones, broken
    never); quick was scored in both protocols: its own figure is the best, its reference one is not."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from chargpt.tracking import connection as tracking

    for name in ("params.yaml", "dvc.yaml"):  # a project: compare finds it from the current directory
        shutil.copy(REPO / name, tmp_path / name)
    connected = tracking.connect()
    mlflow.set_tracking_uri(connected.uri)  # the runs below are logged as a stage logs them: MLflow's fluent API
    mlflow.set_experiment(experiment_id=connected.experiment_id)

    def log(name, test_bpc, wd, lr_max, nested=False, schedule="onecycle", targets=None, extra=None, tags=None):
        with mlflow.start_run(run_name=name, tags={"chargpt.run": name} | (tags or {})):
            mlflow.log_params(
                {
                    "optimizer.name": "sgd",
                    "schedule.name": schedule,
                    "schedule.lr_min": 1e-4,
                    "resolved.lr_max": lr_max,
                    "schedule.momentum_max": 0.9,
                    "schedule.momentum_min": 0.8,
                    "optimizer.weight_decay": wd,
                }
                | (extra or {})
            )
            mlflow.log_metrics(
                {"iterations": 100, "train_seconds": 12.5}
                | (targets or {})
                | (
                    {"test_bpc": test_bpc, "val_bpc": test_bpc - 0.01, "test_accuracy": 0.7, "val_accuracy": 0.71}
                    if test_bpc
                    else {}
                )
            )
            if nested:
                with mlflow.start_run(run_name=f"{name}/lr_range_test", nested=True, tags={"chargpt.run": name}):
                    mlflow.log_metric("loss", 3.0)
        time.sleep(0.01)  # distinct start times

    log("wd_1e-4", 1.50, 1e-4, 0.1)  # an older attempt, superseded below
    # final records a key that wd_1e-4 predates, and wd_1e-4 one that final lacks.
    log(
        "final",
        1.20,
        1e-5,
        0.1,
        nested=True,
        targets={"iters_to_bpc_2": 40, "iters_to_bpc_1.5": 90},
        extra={"train.tf32": True, "eval.resolved_stride": 32, "model.context": 32, "resolved.precision": "fp32"},
    )
    log("wd_1e-4", 1.30, 1e-4, 0.1, schedule="cosine", targets={"iters_to_bpc_2": 60},
        extra={"train.aux_losses": True, "eval.resolved_stride": 16, "model.context": 32})  # fmt: skip
    log("broken", None, 1e-6, 0.05)  # never evaluated
    log("quick", 1.10, 1e-6, 0.05, targets={"test_bpc_ref": 1.25, "val_bpc_ref": 1.24},
        extra={"eval.resolved_stride": 8, "model.context": 32},
        tags={"chargpt.protocol": "stride 8 of 32, bf16"})  # fmt: skip
    yield
    mlflow.set_tracking_uri(None)


def test_one_row_per_run_latest_attempt_sorted_by_test_bpc_in_the_reference_protocol(store):
    table = compare.comparison_table(compare.load_runs(Path.cwd()))
    # quick's own figure (1.10, stride 8) is the best, but not comparable: the reference (1.25) ranks it
    assert list(table["run"]) == ["final", "quick", "wd_1e-4", "broken"]
    assert list(table["test_bpc_ref"][:3]) == [1.20, 1.25, "not scored"]  # final's own protocol was the reference
    assert list(table["val_bpc_ref"][:3]) == [1.19, 1.24, "not scored"]
    assert list(table["protocol"]) == ["consecutive, fp32", "stride 8 of 32, bf16", "stride 16 of 32", ""]
    assert list(table["test_bpc"][:3]) == [1.20, 1.10, 1.30]  # the latest wd_1e-4 attempt, not the better older one
    assert table.loc[0, "momentum"] == "0.9 -> 0.8" and table.loc[0, "weight_decay"] == 1e-5
    assert table.loc[2, "momentum"] == "0.9" and table.loc[2, "schedule"] == "cosine"  # cosine holds beta1
    # iterations to target: one column per target any run logged, highest BPC first; blank where not reached
    assert table["iters_to_bpc_2"].tolist() == [40, pd.NA, 60, pd.NA]
    assert table["iters_to_bpc_1.5"].tolist()[:3] == [90, pd.NA, pd.NA]


def test_only_the_named_runs(store):
    assert list(compare.comparison_table(compare.load_runs(Path.cwd()), ["broken", "final"])["run"]) == [
        "final",
        "broken",
    ]


def test_formats(store, tmp_path, capsys):
    compare.main(["--format", "markdown"])
    out = capsys.readouterr().out.splitlines()
    assert (
        out[0]
        == (
            "| run | optimizer | schedule | lr | momentum | weight_decay | iterations | val_bpc_ref | test_bpc_ref "
            "| protocol | val_bpc | test_bpc | val_accuracy | test_accuracy | iters_to_bpc_2 | iters_to_bpc_1.5 "
            "| train_seconds | status |"
        )
        and len(out) == 2 + 4
    )
    assert out[2] == (
        "| final | sgd | onecycle | 0.0001 -> 0.1 | 0.9 -> 0.8 | 1e-05 | 100 | 1.19 | 1.2 | consecutive, fp32 | 1.19 "
        "| 1.2 | 0.71 | 0.7 | 40 | 90 | 12.5 | FINISHED |"
    )
    assert out[4].startswith("| wd_1e-4 | sgd | cosine | 0.0001 -> 0.1 | 0.9 | 0.0001 | 100 | not scored | not scored ")
    compare.main(["--format", "json", "--output", str(tmp_path / "t.json")])
    rows = json.loads((tmp_path / "t.json").read_text())
    assert [r["run"] for r in rows] == ["final", "quick", "wd_1e-4", "broken"] and rows[3]["test_bpc"] is None
    assert rows[3]["test_bpc_ref"] is None and rows[2]["test_bpc_ref"] == "not scored"
    compare.main(["--format", "csv"])
    assert capsys.readouterr().out.splitlines()[0].split(",")[:4] == ["run", "optimizer", "schedule", "lr"]


def test_details_add_hardware_command_and_config_diff(store, capsys):
    table = compare.detailed_table(compare.load_runs(Path.cwd()), ["final", "wd_1e-4"], diff_from="final")
    assert list(table.columns[:2]) == ["run", "config_diff"]
    assert table.loc[0, "config_diff"] == "(the base: final)"
    # train.tf32: not recorded by wd_1e-4, so not a difference; train.aux_losses: recorded by wd_1e-4 alone.
    assert table.loc[1, "config_diff"] == "optimizer.weight_decay=0.0001; schedule.name=cosine; train.aux_losses=True"
    assert list(table["command"]) == ["dvc exp run evaluate@final", "dvc exp run evaluate@wd_1e-4"]
    with pytest.raises(SystemExit, match="--diff-from nope: no such run"):
        compare.detailed_table(compare.load_runs(Path.cwd()), None, diff_from="nope")


def test_outside_a_project_compare_says_so_and_creates_no_store(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run(
        [sys.executable, "-m", "chargpt.cli", "compare"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == (
        f"chargpt compare: {tmp_path}: not inside a chargpt project (no dvc.yaml and "
        f"params.yaml here or above); run it in the project, or pass --repo"
    )
    assert list(tmp_path.iterdir()) == []  # no mlflow.db, no lock file
    inside = subprocess.run(
        [sys.executable, "-m", "chargpt.cli", "compare", "--repo", str(REPO / "tests")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert inside.returncode == 1 and "no MLflow store: nothing has been recorded" in inside.stderr
    assert list(tmp_path.iterdir()) == [] and not (REPO / "tests/mlflow.db").exists()


def test_a_run_name_that_is_not_defined_is_an_error_naming_the_defined_ones(store):
    with pytest.raises(
        compare.ConfigError,
        match=r"--runs: \['quickstart_typo'\] not defined in .*params.yaml nor "
        r"recorded; defined: \[.*'broken'.*'quickstart'",
    ):
        compare.main(["--runs", "quickstart_typo"])


def test_a_corrupt_store_is_one_line_naming_the_file_and_what_to_do(store, capsys):
    db = Path.cwd() / "mlflow.db"
    db.write_bytes(b"garbage" * 1000)
    proc = subprocess.run([sys.executable, "-m", "chargpt.cli", "compare"], capture_output=True, text=True)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert f"{db}: not a readable MLflow store (file is not a database); move it aside" in proc.stderr


def test_chargpt_alone_prints_help_for_every_subcommand():
    from chargpt.cli import COMMANDS

    proc = subprocess.run([sys.executable, "-m", "chargpt.cli"], capture_output=True, text=True)
    assert proc.returncode == 0
    for name in COMMANDS:
        assert f"chargpt {name}:" in proc.stdout and f"usage: chargpt {name}" in proc.stdout


def test_the_mlflow_view_sorts_on_the_reference_and_shows_old_runs_as_compare_does(store):
    """MLflow's saved view: the reference figures first and sorted on, each run's own protocol beside them. A run
    evaluated before the reference existed gets its own figure under the reference's name where its protocol was
    the reference (the same number, not scored again) and a protocol tag saying where it was not scored."""
    import mlflow

    from chargpt.tracking import connection as tracking
    from chargpt.tracking.view import publish_view, stored_view

    client = mlflow.MlflowClient(tracking_uri=tracking.tracking_uri(Path.cwd()))
    experiment_id = publish_view(Path.cwd())
    view = stored_view(client.get_experiment(experiment_id).tags)
    assert view["orderByKey"] == "metrics.`test_bpc_ref`" and view["orderByAsc"] is True
    assert view["selectedColumns"][:4] == [
        "metrics.`test_bpc_ref`", "metrics.`val_bpc_ref`", "tags.`chargpt.protocol`", "metrics.`test_bpc`"
    ]  # fmt: skip

    def latest() -> dict:
        found = client.search_runs([experiment_id], "tags.`chargpt.latest_attempt` = 'true'")
        return {r.data.tags["chargpt.run"]: r for r in found}

    shown = {name: r.data for name, r in latest().items()}
    assert (shown["final"].metrics["test_bpc_ref"], shown["final"].metrics["val_bpc_ref"]) == (1.20, 1.19)
    assert shown["final"].tags["chargpt.protocol"] == "consecutive, fp32"
    assert "test_bpc_ref" not in shown["wd_1e-4"].metrics
    assert shown["wd_1e-4"].tags["chargpt.protocol"] == "stride 16 of 32; reference not scored"
    assert shown["quick"].metrics["test_bpc_ref"] == 1.25
    assert shown["quick"].tags["chargpt.protocol"] == "stride 8 of 32, bf16"
    publish_view(Path.cwd())  # again: nothing more to write
    assert len(client.get_metric_history(latest()["final"].info.run_id, "test_bpc_ref")) == 1
