"""A real `mlflow server` on 127.0.0.1, as the chargpt MLflow app (`--app-name chargpt`, what `chargpt ui` serves): a
tiny pipeline logs to it through MLFLOW_TRACKING_URI, and the REST client finds the run, its metrics, tags and
artifacts there (and nothing in the local SQLite store); its UI page seeds a new browser with the stages' view."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import TINY_RUN, make_project, run, seeded_views, tiny_text


@pytest.fixture
def mlflow_server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--app-name",
            "chargpt",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "served"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # as `chargpt ui` starts it
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield uri
    server.terminate()
    server.wait(timeout=30)
    log.close()


def test_a_tiny_pipeline_logs_runs_metrics_and_artifacts_to_the_server(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(tiny_text(60_000))
    root, env = make_project(tmp_path / "project", {"tiny": TINY_RUN}, {"url": corpus.as_uri(), "checksums": None})
    env["MLFLOW_TRACKING_URI"] = mlflow_server
    run(["dvc", "repro", "evaluate@tiny"], root, env)
    assert not (root / "mlflow.db").exists()  # everything went to the server

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("chargpt")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"tiny", "tiny/lr_range_test"}
    tiny = runs["tiny"]
    ev = json.loads((root / "reports/tiny/eval.json").read_text())
    assert tiny.info.status == "FINISHED"
    assert tiny.data.metrics["test_bpc"] == pytest.approx(ev["test_bpc"]) and tiny.data.metrics["iterations"] == 30
    meta = json.loads((root / "data/processed/meta.json").read_text())
    assert tiny.data.tags["data.train_sha256"] == meta["splits"]["train"]["sha256"]
    assert tiny.data.params["schedule.name"] == "onecycle" and tiny.data.params["model.d_model"] == "32"
    probe = client.get_metric_history(tiny.info.run_id, "val_probe_bpc")
    assert [m.step for m in probe] == [10, 20, 30]
    assert [m.step for m in client.get_metric_history(tiny.info.run_id, "lr")] == [5, 10, 15, 20, 25, 30]

    listed = {a.path for a in client.list_artifacts(tiny.info.run_id)}
    assert {"plots", "train_curve.tsv", "eval.json"} <= listed
    assert {a.path for a in client.list_artifacts(tiny.info.run_id, "plots")} == {
        "plots/train_curve.png",
        "plots/lr_range_test.png",
    }
    fetched = client.download_artifacts(tiny.info.run_id, "eval.json", str(tmp_path))
    assert json.loads(open(fetched).read()) == ev  # served back byte for byte
    assert (tmp_path / "served").is_dir()  # stored by the server, not by the client

    # The UI page (under uvicorn, through the app's factory) carries the seed of the view the stages published
    from chargpt.tracking.ui_app import experiment_state_key
    from chargpt.tracking.view import stored_view

    page = urllib.request.urlopen(f"{mlflow_server}/").read().decode()
    assert page.index("seedMlflowUi(window.localStorage") < page.index("static/js/main.")
    experiment = client.get_experiment(experiment.experiment_id)  # as the stages left it
    (view,) = seeded_views(page)
    assert view["key"] == experiment_state_key(experiment.experiment_id)
    assert view["state"] == stored_view(experiment.tags) and "metrics.`test_bpc`" in view["state"]["selectedColumns"]
