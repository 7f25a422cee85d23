"""End to end: real `dvc repro` of a tiny run on a generated corpus, in a temporary copy of the repo."""

import json
import subprocess
import sys

import pytest
import yaml
from conftest import run


def test_local_corpus_through_all_five_stages(trained, project):
    """The README's offline recipe: a local corpus without editing tracked files, checksums off."""
    (root, env, out), corpus = trained, project[2]
    for stage in ("download", "preprocess", "lr_range_test@tiny", "train@tiny", "evaluate@tiny", "train@tiny_cosine"):
        assert f"Running stage '{stage}'" in out

    meta = json.loads((root / "data/processed/meta.json").read_text())
    assert [meta["splits"][s]["bytes"] for s in ("train", "val", "test")] == [54_000, 3_000, 3_000]
    assert (root / "models/tiny/model.pt").stat().st_size > 0
    lr_test = json.loads((root / "reports/tiny/lr_range_test.json").read_text())
    train = json.loads((root / "reports/tiny/train_metrics.json").read_text())
    import torch

    model = torch.load(root / "models/tiny/model.pt", weights_only=True)
    assert model["lr_max"] == lr_test["suggested_lr"]  # lr_max: auto takes the range test's suggestion
    assert train["iterations"] == 30 and train["tokens"] == 30 * 4 * 32
    curve = (root / "reports/tiny/train_curve.tsv").read_text().splitlines()
    assert (
        curve[0].split("\t")
        == [
            "step",
            "lr",
            "momentum",
            "train_loss",
            "grad_norm",
            "clipped_fraction",
            "val_probe_bpc",
            "val_probe_accuracy",
        ]
        and len(curve) == 1 + 6
    )
    assert 0 < train["val_probe_accuracy"] <= 1
    ev = json.loads((root / "reports/tiny/eval.json").read_text())
    assert ev["val_bytes_scored"] == 2_999 and ev["test_bytes_scored"] == 2_999  # whole splits
    assert 0 < ev["test_bpc"] < 8.0  # 30 steps on repetitive text already beat the uniform 8 bits
    assert 0 < ev["val_accuracy"] <= 1 and 0 < ev["test_accuracy"] <= 1  # beside every BPC
    # the model file carries its training gradients' RMS, and tiny_cosine's test is scored with Krause's update by it
    from chargpt.use.inference import load_adaptable

    cosine_model, rms = load_adaptable(root / "models/tiny_cosine/model.pt")
    assert rms.keys() == dict(cosine_model.named_parameters()).keys()
    cosine = json.loads((root / "reports/tiny_cosine/eval.json").read_text())
    assert cosine["protocol"]["dynamic"]["optimizer"] == "rms" and cosine["protocol"]["adaptive_splits"] == ["test"]
    assert "val_bpc_dynamic" not in cosine and "val_bpc_mixed" not in cosine
    assert cosine["test_bpc_dynamic_mixed"] < cosine["test_bpc_dynamic"] < cosine["test_bpc"]
    assert cosine["test_bpc_mixed"] < cosine["test_bpc"]

    # The seed's range test (tiny_cosine): both bounds suggested from the val accuracy, beside the fixed schedule's.
    seed_test = json.loads((root / "reports/tiny_cosine/lr_range_test.json").read_text())
    assert seed_test["method"] == "linear_accuracy" and lr_test["method"] == "exponential_loss"
    assert 1e-4 <= seed_test["suggested_lr_min"] <= seed_test["suggested_lr"] <= 0.03
    assert (seed_test["schedule_lr_min"], seed_test["schedule_lr_max"]) == (1e-4, 3e-3)
    rows = (root / "reports/tiny_cosine/lr_range_test.csv").read_text().splitlines()
    accuracy_rows = [r.split(",") for r in rows[1:] if r.split(",")[4]]
    assert [int(r[0]) for r in accuracy_rows] == [3, 7, 11, 15, 19]  # every eval_interval (4) steps
    assert torch.load(root / "models/tiny_cosine/model.pt", weights_only=True)["lr_max"] == 3e-3  # fixed: kept

    shown = json.loads(run(["dvc", "metrics", "show", "--json"], root, env).stdout)
    files = next(iter(shown.values()))["data"]
    assert files["reports/tiny/eval.json"]["data"]["test_bpc"] == ev["test_bpc"]

    source = json.loads((root / "data/raw/corpus.json").read_text())
    assert source["url"] == corpus.as_uri() and source["verified"] == []  # observed sha256 recorded instead
    assert source["corpus"]["size"] == 60_000

    # Nothing changed: a second repro runs no stage.
    again = run(["dvc", "repro", "evaluate@tiny", "evaluate@tiny_cosine"], root, env).stdout
    assert "Running stage" not in again


STAGES = [  # the run's; the data stages import nothing of reporting (the import contract): their splits are copied
    ["stages/lr_range.py", "--run", "tiny"],
    ["stages/train.py", "--run", "tiny"],
    ["stages/evaluate.py", "--run", "tiny"],
]
TIMING = ("seconds", "per_second")  # wall-clock figures: the only keys two identical runs may differ in


def without_timing(value):
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if not k.endswith(TIMING)}
    return value


def test_reporting_cannot_change_a_runs_outputs(trained, tmp_path):
    """Why dvc.yaml lists no chargpt/tracking/ module as a dep: the tiny run above, recorded in MLflow, and the same
    run's stage scripts with the null tracker (CHARGPT_TRACKING=off) in a fresh folder, from the same splits, write
    the same model weights, curves, range test and scores."""
    import os
    import shutil

    import torch

    recorded = trained[0]
    silent = tmp_path / "silent"
    silent.mkdir()
    shutil.copytree(recorded / "stages", silent / "stages")
    shutil.copytree(recorded / "data/processed", silent / "data/processed")
    shutil.copy(recorded / "params.yaml", silent / "params.yaml")  # as `dvc exp run -S` left it: the local corpus
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"CHARGPT_TRACKING": "off"}
    for stage in STAGES:
        proc = subprocess.run([sys.executable, *stage], cwd=silent, env=env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert (recorded / "mlflow.db").is_file() and not (silent / "mlflow.db").exists()
    a, b = (torch.load(p / "models/tiny/model.pt", weights_only=True) for p in (recorded, silent))
    assert a.pop("mlflow_run_id") and b.pop("mlflow_run_id") is None  # the one field that names the MLflow run
    for tensors in ("model", "dynamic_rms"):  # the weights, and their training gradients' RMS
        weights_a, weights_b = a.pop(tensors), b.pop(tensors)
        assert weights_a.keys() == weights_b.keys() and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert a == b  # config, step, lr_max
    for name in ("train_curve.tsv", "lr_range_test.csv"):
        assert (recorded / "reports/tiny" / name).read_bytes() == (silent / "reports/tiny" / name).read_bytes(), name
    for name in ("lr_range_test.json", "train_metrics.json", "eval.json"):
        read = lambda root: without_timing(json.loads((root / "reports/tiny" / name).read_text()))  # noqa: E731
        assert read(recorded) == read(silent), name


def stale(root, env) -> set[str]:
    """The stages `dvc status` reports (its API, in this process: a `dvc` process costs a second of imports)."""
    import contextlib

    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(str(root)) as repo:  # stages named as from the project's root
        return set(repo.status())


def stale_after_editing(root, env, module: str) -> set[str]:
    """The stages `dvc status` reports once a line is appended to `module` (restored after)."""
    path = root / module
    code = path.read_text()
    try:
        path.write_text(code + "\n# one more line\n")
        return stale(root, env)
    finally:
        path.write_text(code)


def test_dvc_status_reports_exactly_the_stages_a_change_affects(trained):
    """After a complete run: a code change reports the stages that run that code, and only those (reporting code
    none), a change of the base run reports its variants too, and an eval-only setting reports evaluate alone."""
    root, env, _ = trained
    assert stale(root, env) == set()
    per_run = lambda *stages: {f"{s}@{r}" for s in stages for r in ("tiny", "tiny_cosine")}  # noqa: E731
    # the quickstart's optimizer, imported by train and the range test
    assert stale_after_editing(root, env, "chargpt/train/muon.py") == per_run("lr_range_test", "train")
    assert stale_after_editing(root, env, "chargpt/model/gpt.py") == per_run("lr_range_test", "train", "evaluate")
    assert stale_after_editing(root, env, "chargpt/data/corpus.py") == {"download", "preprocess"}
    # `chargpt runs`: the same, one line a run
    runs = lambda: run(["chargpt", "runs"], root, env).stdout.splitlines()  # noqa: E731
    assert [line.split()[:4] for line in runs()[1:3]] == [
        ["tiny", "yes", "up", "to"],
        ["tiny_cosine", "yes", "up", "to"],
    ]
    model_code = (root / "chargpt/model/gpt.py").read_text()
    try:
        (root / "chargpt/model/gpt.py").write_text(model_code + "\n# one more line\n")
        tiny = runs()[1]
        assert tiny.split()[:3] == ["tiny", "yes", "stale"] and "train: chargpt/model/gpt.py modified" in tiny, tiny
    finally:
        (root / "chargpt/model/gpt.py").write_text(model_code)
    assert stale_after_editing(root, env, "chargpt/train/config.py") == per_run("lr_range_test", "train", "evaluate")
    for reporting in ("chargpt/tracking/compare.py", "chargpt/tracking/view.py", "chargpt/tracking/record.py",
                      "chargpt/tracking/connection.py", "chargpt/tracking/plots.py"):  # fmt: skip
        assert stale_after_editing(root, env, reporting) == set(), reporting

    params = root / "params.yaml"
    settings = params.read_text()
    try:
        changed = yaml.safe_load(settings)
        changed["runs"]["tiny"]["optimizer"]["weight_decay"] = 1e-3  # the base of tiny_cosine: both are affected
        params.write_text(yaml.safe_dump(changed, sort_keys=False))
        assert stale(root, env) == per_run("lr_range_test", "train", "evaluate")

        changed = yaml.safe_load(settings)
        changed["eval"]["stride"] = 16  # evaluation only
        params.write_text(yaml.safe_dump(changed, sort_keys=False))
        assert stale(root, env) == {"evaluate@tiny", "evaluate@tiny_cosine"}
    finally:
        params.write_text(settings)
    assert stale(root, env) == set()


def test_dvc_plots_overlay_every_run(trained):
    root, env, _ = trained
    shown = json.loads(run(["dvc", "plots", "show", "--json"], root, env).stdout)
    assert not shown.get("errors"), shown.get("errors")
    assert set(shown["data"]) == {"val_bpc", "val_accuracy", "train_loss", "lr_range_test", "lr_range_accuracy"}
    for plot_id, filename, field in (
        ("val_bpc", "train_curve.tsv", "val_probe_bpc"),
        ("val_accuracy", "train_curve.tsv", "val_probe_accuracy"),
        ("train_loss", "train_curve.tsv", "train_loss"),
        ("lr_range_test", "lr_range_test.csv", "smoothed_loss"),
    ):
        (plot,) = shown["data"][plot_id]
        points = plot["content"]["data"]["values"]
        assert {p["filename"] for p in points} == {f"tiny/{filename}", f"tiny_cosine/{filename}"}  # both runs
        assert all(field in p for p in points)
        assert plot["content"]["encoding"]["color"]["field"] == "run"  # the shipped templates: a colour per run
    lr_spec = shown["data"]["lr_range_test"][0]["content"]
    assert lr_spec["layer"][0]["encoding"]["x"]["scale"]["type"] == "log"  # the shipped template: log x
    assert lr_spec["layer"][1]["mark"]["type"] == "rule"  # and the suggested LR marked
    suggested = json.loads((root / "reports/tiny/lr_range_test.json").read_text())["suggested_lr"]
    assert {float(p["suggested_lr"]) for p in lr_spec["data"]["values"] if p["filename"].startswith("tiny/")} == {
        suggested
    }

    # The HTML page carries vega itself (.dvc/config's plots.html_template), so it draws with no network.
    run(["dvc", "plots", "show", "--out", "plots_html"], root, env)
    page = (root / "plots_html/index.html").read_text()
    assert "cdn.jsdelivr" not in page and "<script src=" not in page
    assert page.count("vegaEmbed('#") == 5  # every plot
    for package in ("vega@5", "vega-lite@5", "vega-embed@6"):
        assert f"<!-- {package}." in page, package


def test_compare_prints_one_row_per_run_with_iterations_to_target(trained, monkeypatch, chargpt_cli):
    root, env, _ = trained
    monkeypatch.chdir(root)
    rows = {r["run"]: r for r in json.loads(chargpt_cli("compare", "--format", "json")[1])}
    assert set(rows) == {"tiny", "tiny_cosine"}
    assert rows["tiny_cosine"]["schedule"] == "cosine" and rows["tiny"]["schedule"] == "onecycle"
    evaluated = json.loads((root / "reports/tiny/eval.json").read_text())
    assert rows["tiny"]["test_accuracy"] == evaluated["test_accuracy"]
    metrics = json.loads((root / "reports/tiny_cosine/train_metrics.json").read_text())
    curve = [line.split("\t") for line in (root / "reports/tiny_cosine/train_curve.tsv").read_text().splitlines()[1:]]
    first_below_7 = next(int(s) for s, *_, probe in curve if probe and float(probe) <= 7.0)
    assert metrics["iters_to_bpc_7"] == first_below_7 == rows["tiny_cosine"]["iters_to_bpc_7"]
    assert metrics["iters_to_bpc_0.5"] is None  # never reached: null in the JSON, not logged to MLflow,
    assert "iters_to_bpc_0.5" not in rows["tiny_cosine"]  # so no run has that column


def test_runs_scored_under_different_strides_compare_on_the_reference_protocol(trained, monkeypatch, chargpt_cli):
    """tiny is scored in consecutive windows, tiny_cosine in sliding ones (eval.stride 8): evaluate scores both also
    in the reference protocol, and `chargpt compare` and MLflow's view rank them on it. Each figure is the one
    `chargpt score` gives for that model under that protocol."""
    root, env, _ = trained
    ev = {r: json.loads((root / f"reports/{r}/eval.json").read_text()) for r in ("tiny", "tiny_cosine")}
    assert ev["tiny"]["protocol"]["stride"] == 32 and ev["tiny_cosine"]["protocol"]["stride"] == 8
    assert ev["tiny"]["test_bpc_ref"] == ev["tiny"]["test_bpc"] and "test_ref_seconds" not in ev["tiny"]  # once
    assert ev["tiny_cosine"]["test_bpc_ref"] != ev["tiny_cosine"]["test_bpc"]
    assert "test_ref_seconds" in ev["tiny_cosine"]

    monkeypatch.chdir(root)

    def score(run_name: str, *options: str) -> dict:
        return json.loads(chargpt_cli("score", "data/processed/test.bin", "--run", run_name, *options)[1])

    own = score("tiny_cosine")  # the run's own protocol by default: its eval.stride
    assert own["stride"] == 8 and own["bpc"] == pytest.approx(ev["tiny_cosine"]["test_bpc"], abs=5e-4)
    reference = {r: score(r, "--stride", "32")["bpc"] for r in ("tiny", "tiny_cosine")}
    assert reference["tiny_cosine"] == pytest.approx(ev["tiny_cosine"]["test_bpc_ref"], abs=5e-4)

    listed = json.loads(chargpt_cli("compare", "--format", "json")[1])
    rows = {r["run"]: r for r in listed}
    for name in ("tiny", "tiny_cosine"):
        assert rows[name]["test_bpc_ref"] == ev[name]["test_bpc_ref"]
        assert rows[name]["val_bpc_ref"] == ev[name]["val_bpc_ref"]
    precision = ev["tiny"]["protocol"]["precision"]  # train.precision: auto, so this machine's
    assert rows["tiny"]["protocol"] == f"consecutive, {precision}"
    assert rows["tiny_cosine"]["protocol"] == f"stride 8 of 32, {precision}"
    shown = rows["tiny"]["test_bpc_ref"] - rows["tiny_cosine"]["test_bpc_ref"]
    assert shown == pytest.approx(reference["tiny"] - reference["tiny_cosine"], abs=1e-3)
    assert [r["run"] for r in listed] == sorted(rows, key=lambda r: rows[r]["test_bpc_ref"])
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], root, env).stdout)
    files = next(iter(metrics.values()))["data"]
    assert files["reports/tiny_cosine/eval.json"]["data"]["test_bpc_ref"] == ev["tiny_cosine"]["test_bpc_ref"]


def test_mlflow_records_the_run(trained):
    root, env, _ = trained
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("chargpt")
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if r.info.run_name == "tiny"]
    child = [r for r in runs if r.info.run_name == "tiny/lr_range_test"]
    assert len(parent) == 1 and len(child) == 1
    run_ = parent[0]
    assert child[0].data.tags["mlflow.parentRunId"] == run_.info.run_id
    ev = json.loads((root / "reports/tiny/eval.json").read_text())
    assert run_.data.metrics["test_bpc"] == pytest.approx(ev["test_bpc"])
    assert run_.data.metrics["test_accuracy"] == pytest.approx(ev["test_accuracy"])
    assert run_.data.metrics["val_accuracy"] == pytest.approx(ev["val_accuracy"])
    assert [m.step for m in client.get_metric_history(run_.info.run_id, "val_probe_accuracy")] == [10, 20, 30]
    assert run_.data.metrics["iterations"] == 30
    assert run_.data.params["model.n_layer"] == "2" and run_.data.params["optimizer.name"] == "adamw"
    assert run_.data.tags["chargpt.run"] == "tiny" and run_.data.tags["git_commit"]
    meta = json.loads((root / "data/processed/meta.json").read_text())
    assert run_.data.tags["data.test_sha256"] == meta["splits"]["test"]["sha256"]
    assert run_.data.tags["device"] == "cpu" and run_.data.tags["dvc_stage"] == "train@tiny"
    steps = [m.step for m in client.get_metric_history(run_.info.run_id, "train_loss")]
    assert steps == [5, 10, 15, 20, 25, 30]
    artifacts = {a.path for a in client.list_artifacts(run_.info.run_id)}
    assert {"plots", "train_curve.tsv", "eval.json"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run_.info.run_id, "plots")}
    assert plots == {"plots/train_curve.png", "plots/lr_range_test.png"}
    nested = {a.path for a in client.list_artifacts(child[0].info.run_id, "lr_range_test")}
    assert "lr_range_test/lr_range_test.csv" in nested
    assert (root / "mlartifacts").is_dir()  # artifacts beside the store, not in a DVC temp dir
    # The UI's saved view: a model-training experiment, the named runs by test BPC with BPC columns.
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    from chargpt.tracking import ui_app
    from chargpt.tracking.view import stored_view

    view = stored_view(experiment.tags)
    # and the chargpt MLflow app seeds a new browser's table of this experiment with it
    (seed,) = [
        s
        for s in ui_app.saved_view_entries(client)
        if s["key"] == ui_app.experiment_state_key(experiment.experiment_id)
    ]
    assert seed["state"] == view
    assert view["orderByKey"] == "metrics.`test_bpc_ref`" and view["orderByAsc"] is True
    assert view["searchFilter"] == "tags.`chargpt.latest_attempt` = 'true'"  # each named run once, no range test
    assert run_.data.tags["chargpt.latest_attempt"] == "true" and "chargpt.latest_attempt" not in child[0].data.tags
    assert view["selectedColumns"][:3] == ["metrics.`test_bpc_ref`", "metrics.`val_bpc_ref`", "tags.`chargpt.protocol`"]
    assert {"metrics.`val_bpc`", "metrics.`test_bpc`", "metrics.`test_accuracy`", "metrics.`iterations`"} <= set(
        view["selectedColumns"]
    )
    assert run_.data.tags["chargpt.protocol"] == f"consecutive, {ev['protocol']['precision']}"
    assert run_.data.metrics["test_bpc_ref"] == pytest.approx(ev["test_bpc"])
    assert "params.`schedule.name`" in view["selectedColumns"]  # it differs between tiny and tiny_cosine
    assert view["compareRunCharts"][0]["metricKey"] == "test_bpc_ref"
    assert "lr_max" not in run_.data.metrics and "resolved.lr_max" in run_.data.params  # a param, not a metric

    # MLflow 3's Logged Models view: each run's trained model, linked to its run, ranked by its BPC, pointing at DVC
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    models = mlflow.search_logged_models(
        experiment_ids=[experiment.experiment_id], output_format="list",
        order_by=[{"field_name": "metrics.test_bpc", "ascending": True}],
    )  # fmt: skip
    assert sorted(m.name for m in models) == ["tiny", "tiny_cosine"]
    (model,) = [m for m in models if m.name == "tiny"]
    assert model.source_run_id == run_.info.run_id and model.status.to_proto() == 2  # READY
    linked = {m.key: m.value for m in model.metrics}
    assert linked["test_bpc"] == pytest.approx(ev["test_bpc"]) and linked["val_bpc"] == pytest.approx(ev["val_bpc"])
    assert linked["test_accuracy"] == pytest.approx(ev["test_accuracy"]) and linked["iterations"] == 30
    assert (
        model.params["model.n_layer"] == "2" and model.tags["mlflow.source.git.commit"] == run_.data.tags["git_commit"]
    )
    assert "dvc pull train@tiny" in model.tags["chargpt.weights"]
    import hashlib

    assert (
        model.tags["chargpt.model_sha256"] == hashlib.sha256((root / "models/tiny/model.pt").read_bytes()).hexdigest()
    )
    assert not client.list_artifacts(run_.info.run_id, "model")  # the weights are DVC's: no copy in MLflow
    # and MLflow's system metrics of the training run (psutil), on by default
    assert any(key.startswith("system/cpu_utilization") for key in run_.data.metrics), sorted(run_.data.metrics)


def test_a_config_error_stops_the_stage_before_any_work(project):
    root, env, _ = project
    proc = run([sys.executable, "stages/train.py", "--run", "nope"], root, env, check=False)
    assert (
        proc.returncode != 0
        and "run 'nope' is not defined under runs or grids; defined: ['tiny', 'tiny_cosine']" in proc.stderr
    )


def test_dvc_artifacts_get_fetches_a_runs_model_without_a_clone(trained, tmp_path):
    """dvc.yaml's artifacts (chargpt sync-dvc): after a push, `dvc artifacts get <repo> <run>` fetches the model into
    an empty folder, and chargpt samples from it."""
    root, env, _ = trained
    declared = yaml.safe_load((root / "dvc.yaml").read_text())["artifacts"]
    assert set(declared) == {"tiny", "tiny_cosine"}
    assert declared["tiny"]["path"] == "models/tiny/model.pt" and declared["tiny"]["type"] == "model"
    assert "adamw" in declared["tiny"]["labels"] and "cosine" in declared["tiny_cosine"]["labels"]
    remote = tmp_path / "remote"
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "trained", "--allow-empty"], root, env)
    run(["dvc", "remote", "modify", "--local", "local", "url", str(remote)], root, env)
    run(["dvc", "push"], root, env)
    # A version of the artifact, as DVC's model registry (GTO) records one: a git tag tiny@v0.0.1.
    run(["gto", "register", "tiny", "--version", "v0.0.1", "-m", "the tiny run"], root, env)
    out = tmp_path / "fetched"
    out.mkdir()
    run(["dvc", "artifacts", "get", str(root), "tiny", "-o", str(out / "model.pt"), "--remote-config",
         f"url={remote}"], tmp_path, env)  # fmt: skip
    assert (out / "model.pt").read_bytes() == (root / "models/tiny/model.pt").read_bytes()
    sampled = subprocess.run(["chargpt", "sample", "--checkpoint", str(out / "model.pt"), "--prompt", "the ",
                              "--bytes", "20"], cwd=tmp_path, env=env, capture_output=True)  # fmt: skip
    assert sampled.returncode == 0 and len(sampled.stdout) == 20, sampled.stderr


def test_dvc_exp_run_changes_one_key_of_a_variant_and_reruns_that_variant_only(
    trained, project, monkeypatch, chargpt_cli
):
    root, env, corpus = project
    before = yaml.safe_load((root / "params.yaml").read_text())["runs"]["tiny_cosine"]
    out = run(
        [
            "dvc",
            "exp",
            "run",
            "-S",
            f"data.url={corpus.as_uri()}",
            "-S",
            "data.checksums=null",
            "-S",
            "runs.tiny_cosine.train.target_bpc=[7.5]",
            "evaluate@tiny",
            "evaluate@tiny_cosine",
        ],
        root,
        env,
    ).stdout
    after = yaml.safe_load((root / "params.yaml").read_text())["runs"]["tiny_cosine"]
    assert after == {**before, "train": {**before["train"], "target_bpc": [7.5]}}  # still `base: tiny` + differences
    assert "Running stage 'train@tiny_cosine'" in out and "Running stage 'train@tiny'" not in out
    metrics = json.loads((root / "reports/tiny_cosine/train_metrics.json").read_text())
    assert "iters_to_bpc_7.5" in metrics
    monkeypatch.chdir(root)
    listed = chargpt_cli("compare", "--details", "--diff-from", "tiny", "--format", "json")[1]
    rows = {r["run"]: r for r in json.loads(listed)}
    assert "schedule.name=cosine" in rows["tiny_cosine"]["config_diff"]  # the resolved config, base included
    assert "train.target_bpc=[7.5]" in rows["tiny_cosine"]["config_diff"]
    # MLflow's view shows each named run once: the latest attempt is tagged, the first tiny_cosine no longer
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("chargpt")
    attempts = client.search_runs(
        [experiment.experiment_id], "tags.`chargpt.run` = 'tiny_cosine'", order_by=["start_time DESC"]
    )
    attempts = [r for r in attempts if "mlflow.parentRunId" not in r.data.tags]
    assert len(attempts) == 2 and [r.data.tags.get("chargpt.latest_attempt") for r in attempts] == ["true", None]
    shown = client.search_runs([experiment.experiment_id], "tags.`chargpt.latest_attempt` = 'true'")
    assert sorted(r.info.run_name for r in shown) == ["tiny", "tiny_cosine"]
    assert shown[0].data.metrics.keys() >= {"test_bpc"}
