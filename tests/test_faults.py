"""Faults met during training: a diverging LR."""

import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY_RUN
from test_resume import make_project

pytestmark = pytest.mark.slow


def test_diverging_training_fails_cleanly_and_is_recorded(tmp_path, params):
    params["runs"] = {"tiny": {**TINY_RUN, "optimizer": {"name": "sgd", "grad_clip": 0.0},
                               "schedule": {"lr_min": 1.0e-3, "lr_max": 1.0e4},
                               "train": {**TINY_RUN["train"], "iterations": 200, "checkpoint_every": 1}}}
    root = tmp_path / "p"
    env = make_project(root, params)
    proc = subprocess.run([sys.executable, str(REPO / "stages/train.py"), "--run", "tiny"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "training diverged at step" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (root / "models/tiny/model.pt").exists()
    state = torch.load(root / "checkpoints/tiny/last.pt", weights_only=True)  # the last good state
    assert all(torch.isfinite(v).all() for v in state["model"].values())

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("chargpt").experiment_id],
                             filter_string="attributes.run_name = 'tiny'")[0]
    assert run.info.status == "FAILED"
    assert int(run.data.tags["diverged_at_step"]) > state["loop"]["step"]
