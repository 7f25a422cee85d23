"""Data parallel: the train stage under torchrun with 2 CPU processes (gloo) against 1 process with the same global
batch, also with gradient accumulation: the same losses and weights, to float rounding."""

import json
import shutil
import sys

import pytest
import torch
import yaml
from conftest import REPO, TINY_MODEL, make_project, params_with_runs, run

BASE = {
    "model": TINY_MODEL,
    "optimizer": {"name": "adamw", "weight_decay": 1.0e-4},
    "schedule": {"lr_min": 1.0e-4, "lr_max": 3.0e-3},
    "lr_range_test": {"lr_start": 1.0e-5, "lr_end": 1.0, "iterations": 12, "skip_start": 2, "smoothing": 0.5},
    # fp32: the processes must agree to float rounding (bf16 autocast, the default on a CPU with native bf16,
    # rounds each process's partial sums apart)
    "train": {
        "iterations": 24,
        "batch_size": 8,
        "eval_interval": 8,
        "eval_batches": 2,
        "log_interval": 4,
        "precision": "fp32",
    },
}


def with_train(**train) -> dict:
    return {**BASE, "train": {**BASE["train"], **train}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The three runs trained by the train stage run as DVC runs it (`python stages/train.py`; it relaunches itself
    under torchrun where train.nproc > 1), in a project of the tiny splits. Their LR range tests are one computation
    (the same model, data and settings), made once and given to each."""
    runs = {
        "one": with_train(),
        "two_procs": with_train(nproc=2),
        "two_procs_accumulate": with_train(nproc=2, micro_batch_size=2),
    }  # 2 x 2 micro-batches of 2
    project, env = make_project(tmp_path_factory.mktemp("ddp"), {"one": runs["one"]}, dvc=False)
    (project / "params.yaml").write_text(yaml.safe_dump(params_with_runs(runs), sort_keys=False))
    for name in runs:
        if name != "one":
            shutil.copytree(project / "reports/one", project / f"reports/{name}")
        recorded = name == "two_procs"  # test_only_rank_0_records reads its MLflow run; the others, MLflow off
        run([sys.executable, str(REPO / "stages/train.py"), "--run", name], project,
            env if recorded else env | {"CHARGPT_TRACKING": "off"})  # fmt: skip
    return project


def curve(project, name):
    lines = (project / f"reports/{name}/train_curve.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


@pytest.mark.parametrize("name", ["two_procs", "two_procs_accumulate"])
def test_same_global_batch_same_training(trained, name):
    ref, other = curve(trained, "one"), curve(trained, name)
    assert [r["step"] for r in other] == [r["step"] for r in ref] == [str(s) for s in range(4, 25, 4)]
    for a, b in zip(ref, other):
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=1e-5, abs=1e-6), a["step"]
        assert float(b["lr"]) == float(a["lr"])  # the schedule counts global optimizer steps
    probes = [(float(a["val_probe_bpc"]), float(b["val_probe_bpc"])) for a, b in zip(ref, other) if a["val_probe_bpc"]]
    assert len(probes) == 3 and all(b == pytest.approx(a, rel=1e-5) for a, b in probes)
    ref_w = torch.load(trained / "models/one/model.pt", weights_only=True)["model"]
    other_w = torch.load(trained / f"models/{name}/model.pt", weights_only=True)["model"]
    for key in ref_w:
        torch.testing.assert_close(other_w[key], ref_w[key], rtol=1e-4, atol=1e-5, msg=key)
    metrics = json.loads((trained / f"reports/{name}/train_metrics.json").read_text())
    assert metrics["iterations"] == 24 and metrics["tokens"] == 24 * 8 * 32  # global tokens


def test_only_rank_0_records(trained):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{trained / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("chargpt").experiment_id], filter_string="tags.`chargpt.run` = 'two_procs'"
    )
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1  # one MLflow run, not one per rank
    assert parents[0].data.params["resolved.processes"] == "2"
    steps = [m.step for m in client.get_metric_history(parents[0].info.run_id, "train_loss")]
    assert steps == list(range(4, 25, 4))  # no step logged twice
