"""Kill training from outside (SIGKILL, SIGTERM), resume, and end bit for bit where an uninterrupted run ends."""

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from conftest import REPO, TINY_RUN, make_project

RUN = {
    **TINY_RUN,
    "model": TINY_RUN["model"] | {"d_model": 64, "d_ff": 128, "context": 64, "dropout": 0.1},
    "schedule": {"lr_min": 1.0e-4, "lr_max": 3.0e-3},
    "train": {
        "iterations": 200,
        "batch_size": 8,
        "eval_interval": 100,
        "eval_batches": 2,
        "log_interval": 10,
        "checkpoint_every": 29,
        "threads": 1,
        "aux_losses": True,
    },
}  # step-dependent loss weights (layer 1 fades out by step 50) must resume too


def train(root: Path, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "stages/train.py"), "--run", "tiny", *extra],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_after_a_checkpoint(proc: subprocess.Popen, state: Path, signum: int, rng: random.Random) -> None:
    seen = state.stat().st_mtime_ns if state.exists() else None
    deadline = time.time() + 120
    while not state.exists() or state.stat().st_mtime_ns == seen:  # wait for a checkpoint of this session
        assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read()}"
        assert time.time() < deadline
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.5))  # then kill at a random step, well before the last (200)
    proc.send_signal(signum)
    proc.wait(timeout=60)


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def test_killed_and_resumed_run_ends_bitwise_identical(tmp_path):
    rng = random.Random()
    plain, broken = tmp_path / "plain", tmp_path / "broken"
    _, env = make_project(plain, {"tiny": RUN}, dvc=False)
    env["OMP_NUM_THREADS"] = "1"
    params = yaml.safe_load((plain / "params.yaml").read_text())
    shutil.copytree(plain, broken)
    uninterrupted = train(plain, env)  # alongside the broken run: it is checked against this one's end

    state = broken / "checkpoints/tiny/last.pt"
    proc = train(broken, env)
    kill_after_a_checkpoint(proc, state, signal.SIGKILL, rng)
    assert proc.returncode == -signal.SIGKILL and not (broken / "models/tiny/model.pt").exists()
    killed_at = torch.load(state, weights_only=True)["loop"]["step"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{broken / 'mlflow.db'}")
    run_id = torch.load(state, weights_only=True)["mlflow_run_id"]
    logged = max(m.step for m in client.get_metric_history(run_id, "train_loss"))

    # A changed config is refused, naming the key; the saved state is kept.
    changed = yaml.safe_load((broken / "params.yaml").read_text())
    changed["runs"]["tiny"]["train"]["iterations"] = 400
    (broken / "params.yaml").write_text(yaml.safe_dump(changed))
    proc = train(broken, env)
    assert proc.wait(timeout=120) == 1
    assert "train.iterations: checkpoint 200, now 400" in proc.stderr.read() and state.exists()
    (broken / "params.yaml").write_text(yaml.safe_dump(params))

    # SIGTERM: the run saves its state and exits 143.
    proc = train(broken, env)
    kill_after_a_checkpoint(proc, state, signal.SIGTERM, rng)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr.read()
    termed_at = torch.load(state, weights_only=True)["loop"]["step"]
    print(f"SIGKILL after step {max(logged, killed_at)} (last checkpoint: {killed_at}); SIGTERM at step {termed_at}")
    assert logged >= killed_at // 10 * 10  # every log step up to the checkpoint was logged before the kill
    assert termed_at > killed_at

    assert train(broken, env).wait(timeout=300) == 0
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.stderr.read()
    assert not state.parent.exists()  # the in-progress state is gone once the run is complete

    a, b = weights(plain / "models/tiny/model.pt"), weights(broken / "models/tiny/model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"killed at {killed_at}, {termed_at}"
    metrics = [json.loads((p / "reports/tiny/train_metrics.json").read_text()) for p in (plain, broken)]
    assert metrics[0]["val_probe_bpc"] == metrics[1]["val_probe_bpc"] and metrics[1]["tokens"] == 200 * 8 * 64
    assert (plain / "reports/tiny/train_curve.tsv").read_text() == (broken / "reports/tiny/train_curve.tsv").read_text()

    runs = client.search_runs(
        [client.get_experiment_by_name("chargpt").experiment_id], filter_string="attributes.run_name = 'tiny'"
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # one MLflow run across the three sessions
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")]
    assert steps == list(range(10, 201, 10))  # no gap, no duplicate
