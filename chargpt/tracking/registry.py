"""A trained model in MLflow 3's Logged Models view: an external model (the weights stay in DVC, and the model says
how to get them), linked to its training run, with the metrics that describe it."""

from __future__ import annotations

import hashlib
from pathlib import Path

from chargpt.tracking import lazy_import
from chargpt.tracking.tags import git_tags

mlflow = lazy_import("mlflow")

MODEL_TYPE = "chargpt byte-level GPT"
# Metrics of a trained model shown in MLflow's model view (the run keeps every metric).
# (A metric logged with the model is the run's too: each is logged once, linked to both.)
MODEL_METRICS = ("val_bpc_ref", "test_bpc_ref", "val_bpc", "test_bpc", "val_accuracy", "test_accuracy",
                 "val_bpc_dynamic", "test_bpc_dynamic", "val_prefix_bpc_ref", "test_prefix_bpc_ref", "val_prefix_bpc",
                 "test_prefix_bpc", "iterations", "train_seconds")  # fmt: skip


def weights_note(run_name: str) -> str:
    """Where a model's weights are: DVC holds them, MLflow only points at them."""
    return (
        f"models/{run_name}/model.pt, kept by DVC: `dvc pull train@{run_name}` in a clone, or `dvc artifacts get "
        f"<repo> {run_name}` without one (after `gto register {run_name}`)"
    )


def log_model(experiment_id: str, run_id: str, run_name: str, params: dict, weights: Path | None = None) -> str:
    """Run `run_id`'s trained model in MLflow's Logged Models view, linked to the run, with the run's params, the git
    commit, and where the weights are (DVC keeps them: MLflow stores no copy, so no 165 MB a T12 run; `weights`, the
    file, gives its sha256). Needs the run active. Returns the model's id."""
    tags = {"chargpt.run": run_name, "chargpt.weights": weights_note(run_name), **git_tags()}
    if weights is not None:
        tags["chargpt.model_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    model = mlflow.create_external_model(
        name=run_name, source_run_id=run_id, params={k: str(v) for k, v in params.items()}, tags=tags,
        model_type=MODEL_TYPE, experiment_id=experiment_id,
    )  # fmt: skip
    return model.model_id


def latest_model_id(client: mlflow.MlflowClient, experiment_id: str, run_id: str) -> str | None:
    """The newest model run `run_id` logged (after a retraining, the last), or None."""
    found = client.search_logged_models(
        experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}'",
        order_by=[{"field_name": "creation_time", "ascending": False}],
    )  # fmt: skip
    return found[0].model_id if found else None
