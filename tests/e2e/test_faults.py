"""Faults met during training: a diverging LR."""

import re
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import REPO, TINY_RUN, make_project, params_with_runs

from chargpt.device import cpu_model


@pytest.fixture(scope="module")
def ranged(tmp_path_factory):
    """The tiny run's splits and LR range test, made once: each test trains its own variant of it in a copy (the
    range test, which the train stage records, need not be the variant's own for a fault)."""
    return make_project(tmp_path_factory.mktemp("faults") / "p", {"tiny": TINY_RUN}, dvc=False)


def project_with(tmp_path, ranged, tiny: dict):
    root, env = ranged
    shutil.copytree(root, tmp_path / "p")
    (tmp_path / "p/params.yaml").write_text(yaml.safe_dump(params_with_runs({"tiny": tiny})))
    return tmp_path / "p", dict(env)


def test_diverging_training_fails_cleanly_and_is_recorded(tmp_path, ranged):
    tiny = {
        **TINY_RUN,
        "optimizer": {"name": "sgd", "grad_clip": 0.0},
        "schedule": {"lr_min": 1.0e-3, "lr_max": 1.0e4},
        "train": {**TINY_RUN["train"], "iterations": 200, "checkpoint_every": 1},
    }
    root, env = project_with(tmp_path, ranged, tiny)
    proc = subprocess.run(
        [sys.executable, str(REPO / "stages/train.py"), "--run", "tiny"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and "training diverged at step" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (root / "models/tiny/model.pt").exists()
    state = torch.load(root / "checkpoints/tiny/last.pt", weights_only=True)  # the last good state
    assert all(torch.isfinite(v).all() for v in state["model"].values())

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    run = client.search_runs(
        [client.get_experiment_by_name("chargpt").experiment_id], filter_string="attributes.run_name = 'tiny'"
    )[0]
    assert run.info.status == "FAILED"
    assert int(run.data.tags["diverged_at_step"]) > state["loop"]["step"]


def test_a_run_too_long_for_this_machine_stops_early_and_says_how_to_go_on(tmp_path, ranged):
    root, env = project_with(tmp_path, ranged, TINY_RUN)
    env |= {"CHARGPT_MAX_HOURS": "0.000001", "CHARGPT_TRACKING": "off"}  # 3.6 ms; nothing here reads MLflow
    stale = root / "checkpoints/tiny/.last.pt.x1y2.tmp"  # what a SIGKILL during a save leaves
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a state")
    for stage in ("lr_range.py", "train.py"):
        proc = subprocess.run(
            [sys.executable, str(REPO / "stages" / stage), "--run", "tiny"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert f"on {cpu_model()}: estimated" in proc.stderr and "dvc repro evaluate@quickstart" in proc.stderr
        assert "CHARGPT_MAX_HOURS=1 dvc repro" in proc.stderr
    assert not (root / "models/tiny/model.pt").exists()
    assert not stale.exists() and "removed 1 half-written state file(s)" in proc.stderr  # train removes them first
    env["CHARGPT_MAX_HOURS"] = "0"  # no limit
    assert (
        subprocess.run(
            [sys.executable, str(REPO / "stages/train.py"), "--run", "tiny"],
            cwd=root,
            env=env,
            capture_output=True,
            timeout=300,
        ).returncode
        == 0
    )


def test_a_finite_blow_up_is_divergence_too(tmp_path, ranged):
    """SGD at LR 1000 with clipping at 1.0: the loss stays finite, and the run is useless. It fails, no model."""
    tiny = {
        **TINY_RUN,
        "optimizer": {"name": "sgd"},
        "schedule": {"lr_min": 1.0e-4, "lr_max": 1000},
        "train": {**TINY_RUN["train"], "iterations": 100},
    }
    root, env = project_with(tmp_path, ranged, tiny)
    proc = subprocess.run(
        [sys.executable, str(REPO / "stages/train.py"), "--run", "tiny"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    number = r"[\d.e+-]+"
    assert re.search(
        rf"training diverged at step \d+: (train loss {number} is more than 1 above the first interval's|"
        rf"(train_loss|val_probe_bpc) {number} is above {number})",
        proc.stderr,
    ), proc.stderr
    assert not (root / "models/tiny/model.pt").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    run = client.search_runs(
        [client.get_experiment_by_name("chargpt").experiment_id], filter_string="attributes.run_name = 'tiny'"
    )[0]
    assert run.info.status == "FAILED" and "diverged_at_step" in run.data.tags
