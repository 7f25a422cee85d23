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


def test_the_tracking_setting_is_checked(monkeypatch):
    from chargpt.errors import TrackingError

    monkeypatch.setenv("CHARGPT_TRACKING", "of")
    with pytest.raises(TrackingError, match="CHARGPT_TRACKING='of': expected mlflow .the default. or off"):
        connection.enabled()
    monkeypatch.setenv("CHARGPT_TRACKING", "off")
    assert connection.connect() is None
    assert isinstance(record.start_run(None, "r", "train@r", torch.device("cpu")), record.NullRun)
