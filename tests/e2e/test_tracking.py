import os
from pathlib import Path

import pytest
import torch

from chargpt.settings import flatten
from chargpt.tracking import connection, record
from chargpt.tracking.connection import project_root, tracking_uri
from chargpt.tracking.tags import run_tags


def test_project_root_sees_through_dvc_temporary_experiment_copies(tmp_path):
    nested = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    nested.mkdir(parents=True)
    assert project_root(nested) == (tmp_path / "repo").resolve()
    assert project_root(tmp_path / "repo") == (tmp_path / "repo").resolve()


def test_tracking_uri_default_is_an_absolute_sqlite_path(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = tracking_uri()
    assert uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}?timeout=60"  # writers wait up to 60 s for the lock
    assert Path(uri[len("sqlite:///") :]).is_absolute()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri() == "http://127.0.0.1:5000"


def test_flatten_names_params_by_key_path():
    assert flatten({"model": {"n_layer": 2, "d": {"x": 1}}, "name": "q"}) == {
        "model.n_layer": 2,
        "model.d.x": 1,
        "name": "q",
    }


def test_an_unreachable_tracking_server_fails_fast_naming_the_uri():
    import socket
    import time

    import pytest

    from chargpt.errors import TrackingError
    from chargpt.tracking.connection import check_reachable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
    started = time.monotonic()
    with pytest.raises(TrackingError, match=f"MLflow tracking server {uri} is unreachable"):
        check_reachable(uri, timeout_s=2)
    assert time.monotonic() - started < 5
    check_reachable("sqlite:////tmp/x.db")  # a local store needs no server


def test_an_unreachable_server_can_fall_back_to_the_local_store(monkeypatch, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    ours = lambda: {k: v for k, v in os.environ.items() if not k.startswith("_MLFLOW")}  # noqa: E731 (MLflow's own)
    before = ours()
    fallen_back = connection.connect(on_unreachable="local")
    assert fallen_back.uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}?timeout=60"
    assert fallen_back.fallback_from == uri and ours() == before  # nothing handed on through the environment
    assert (tmp_path / "mlflow.db").is_file() and fallen_back.client().get_experiment(fallen_back.experiment_id)
    tags = run_tags("r", "train@r", torch.device("cpu"), fallback_from=fallen_back.fallback_from)
    assert tags["tracking_fallback_from"] == uri


def test_runs_are_tagged_with_the_sha256_of_each_split(monkeypatch):
    meta = {
        "splits": {name: {"sha256": c * 64, "bytes": 9} for name, c in (("train", "a"), ("val", "b"), ("test", "c"))}
    }
    tags = run_tags("r", "train@r", torch.device("cpu"), meta)
    assert (tags["data.train_sha256"], tags["data.val_sha256"], tags["data.test_sha256"]) == (
        "a" * 64,
        "b" * 64,
        "c" * 64,
    )
    assert tags["device"] == "cpu" and tags["torch_version"] == torch.__version__ and tags["dvc_stage"] == "train@r"
    for threads, suffix in ((1, ", 1 thread"), (2, ", 2 threads")):
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
        assert run_tags("r", "train@r", torch.device("cpu"), meta)["hardware"].endswith(suffix)


STAGES = [
    ["stages/download.py"],
    ["stages/preprocess.py"],
    ["stages/lr_range.py", "--run", "tiny"],
    ["stages/train.py", "--run", "tiny"],
    ["stages/evaluate.py", "--run", "tiny"],
]
TIMING = ("seconds", "per_second")  # wall-clock figures: the only keys two identical runs may differ in


def run_tiny_pipeline(root: Path, corpus: Path, tracking_setting: str) -> Path:
    """The five stage scripts in order, as dvc.yaml runs them, in a fresh project at `root`."""
    import os
    import shutil
    import subprocess
    import sys

    import yaml
    from conftest import REPO, TINY_RUN

    root.mkdir()
    shutil.copytree(REPO / "stages", root / "stages")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["runs"], params["data"]["url"], params["data"]["checksums"] = {"tiny": TINY_RUN}, str(corpus), None
    params.pop("grids", None)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"CHARGPT_TRACKING": tracking_setting}
    for stage in STAGES:
        proc = subprocess.run([sys.executable, *stage], cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def without_timing(value):
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if not k.endswith(TIMING)}
    return value


def test_reporting_cannot_change_a_runs_outputs(tmp_path):
    """Why dvc.yaml lists no chargpt/tracking/ module as a dep: the same tiny run, recorded in MLflow and with the
    null tracker (CHARGPT_TRACKING=off), writes the same model weights, curves, range test and scores."""
    import json

    from conftest import tiny_text

    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(tiny_text(60_000))
    recorded = run_tiny_pipeline(tmp_path / "recorded", corpus, "mlflow")
    silent = run_tiny_pipeline(tmp_path / "silent", corpus, "off")
    assert (recorded / "mlflow.db").is_file() and not (silent / "mlflow.db").exists()
    a, b = (torch.load(p / "models/tiny/model.pt", weights_only=True) for p in (recorded, silent))
    assert a.pop("mlflow_run_id") and b.pop("mlflow_run_id") is None  # the one field that names the MLflow run
    weights_a, weights_b = a.pop("model"), b.pop("model")
    assert weights_a.keys() == weights_b.keys() and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert a == b  # config, step, lr_max
    for name in ("train_curve.tsv", "lr_range_test.csv"):
        assert (recorded / "reports/tiny" / name).read_bytes() == (silent / "reports/tiny" / name).read_bytes(), name
    for name in ("lr_range_test.json", "train_metrics.json", "eval.json"):
        read = lambda root: without_timing(json.loads((root / "reports/tiny" / name).read_text()))  # noqa: E731
        assert read(recorded) == read(silent), name


def test_the_tracking_setting_is_checked(monkeypatch):
    from chargpt.errors import TrackingError

    monkeypatch.setenv("CHARGPT_TRACKING", "of")
    with pytest.raises(TrackingError, match="CHARGPT_TRACKING='of': expected mlflow .the default. or off"):
        connection.enabled()
    monkeypatch.setenv("CHARGPT_TRACKING", "off")
    assert connection.connect() is None and not record.run_exists(None, "abc")
    assert isinstance(record.start_run(None, "r", "train@r", torch.device("cpu")), record.NullRun)
