"""One MLflow run per named run and stage: what a stage records goes through a RecordedRun, or, with tracking off,
through a NullRun that records nothing.

MLflow's run functions (mlflow.start_run, log_*, its system metrics and logged models) read a process-wide tracking
URI and act on the active run: start_run sets that URI from the Connection it is given. The calls that take a URI
(the step logger's history, the range test's batches, the model lookup) use the connection's client.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from chargpt.io import read_json
from chargpt.settings import flatten
from chargpt.tracking import lazy_import, registry, view
from chargpt.tracking.connection import Connection, connect
from chargpt.tracking.tags import run_tags

mlflow, pd = lazy_import("mlflow"), lazy_import("pandas")

STEP_METRICS = ("val_probe_bpc", "val_probe_accuracy")  # logged at every eval interval already
SYSTEM_METRICS = "CHARGPT_SYSTEM_METRICS"  # off: no CPU/GPU utilisation and memory metrics in a training run


class RecordedRun:
    """One MLflow run of a stage."""

    def __init__(self, connection: Connection, run: mlflow.ActiveRun, run_name: str, resumed: bool = False):
        self.connection, self.run, self.run_name, self.resumed = connection, run, run_name, resumed
        self.run_id: str | None = run.info.run_id
        self._model_id: str | None = None

    def __enter__(self) -> RecordedRun:
        return self

    def __exit__(self, *exc) -> None:
        self.run.__exit__(*exc)

    def log_params(self, params: dict) -> None:
        """`params` by section ({"model": {"n_layer": 4}}) or as key paths ("model.n_layer")."""
        mlflow.log_params(flatten(params))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """A stage's final metrics, once each: those of registry.MODEL_METRICS linked to the run's model as well."""
        linked = {k: v for k, v in metrics.items() if k in registry.MODEL_METRICS}
        if linked:
            mlflow.log_metrics(linked, step=step, model_id=self.model_id())
        if rest := {k: v for k, v in metrics.items() if k not in registry.MODEL_METRICS}:
            mlflow.log_metrics(rest, step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        mlflow.set_tags(tags)

    def end(self, status: str, tags: dict | None = None) -> None:
        """End the run as KILLED or FAILED, with tags saying why."""
        if tags:
            mlflow.set_tags(tags)
        mlflow.end_run(status)

    def step_logger(self) -> StepLogger:
        return StepLogger(self.connection.client(), self.run_id, self.resumed)

    def log_range_test(self, csv_path: Path, json_path: Path, png_path: Path, run_name: str) -> None:
        """The LR range test as a nested run of this run: its curve as step metrics, its plot and files."""
        curve, summary = pd.read_csv(csv_path), read_json(json_path)
        # The suggestion on the training run itself, beside the schedule's bounds it used (resolved.*: not recipe).
        suggested = (("suggested_lr_min", "resolved.range_test_lr_min"), ("suggested_lr", "resolved.range_test_lr_max"))
        mlflow.log_params({param: summary[key] for key, param in suggested if key in summary})
        with mlflow.start_run(
            experiment_id=self.connection.experiment_id,
            run_name=f"{run_name}/lr_range_test",
            nested=True,
            tags={"chargpt.run": run_name},
        ):
            mlflow.log_params(summary)
            client, run_id = self.connection.client(), mlflow.active_run().info.run_id
            columns = [c for c in ("lr", "loss", "smoothed_loss", "val_accuracy") if c in curve]
            metrics = [
                mlflow.entities.Metric(key, float(row[key]), 0, int(row["step"]))
                for row in curve.to_dict("records")
                for key in columns
                if not pd.isna(row[key])
            ]
            for i in range(0, len(metrics), 1000):  # the REST API takes at most 1000 metrics a batch
                client.log_batch(run_id, metrics=metrics[i : i + 1000])
            for path in (csv_path, json_path, png_path):
                mlflow.log_artifact(str(path), artifact_path="lr_range_test")

    def start_training(self, params: dict, reports: Path) -> None:
        """A new training run's params and its LR range test (lr_range_test.* in `reports`, as a nested run); a
        continued run holds them already."""
        if not self.resumed:
            self.log_params(params)
            self.log_range_test(*(reports / f"lr_range_test.{x}" for x in ("csv", "json", "png")), self.run_name)

    def log_model(self, params: dict, weights: Path | None = None) -> str:
        """This run's trained model in MLflow's Logged Models view (chargpt.tracking.registry); returns its id."""
        self._model_id = registry.log_model(
            self.connection.experiment_id, self.run_id, self.run_name, flatten(params), weights
        )
        return self._model_id

    def model_id(self) -> str:
        """The model this run logged (the newest, after a retraining), or a new one for a run that trained none here
        (an evaluate of a pulled model whose training run is in another store)."""
        if self._model_id is None:
            found = registry.latest_model_id(self.connection.client(), self.run.info.experiment_id, self.run_id)
            self._model_id = found or self.log_model({})
        return self._model_id

    def log_training_outputs(self, metrics: dict, reports: Path, step: int, params: dict, weights: Path) -> None:
        """A finished training run: its model in MLflow's model view (the weights stay DVC's), and its final metrics
        (targets never reached left out), linked to it, with its curve and plots."""
        self.log_model(params, weights=weights)
        final = {k: float(v) for k, v in metrics.items() if k not in STEP_METRICS and v is not None}
        self.log_metrics(final, step)
        for name in ("train_curve.tsv", "train_curve.png", "lr_range_test.png"):
            mlflow.log_artifact(str(reports / name), artifact_path="plots" if name.endswith(".png") else None)


class NullRun:
    """CHARGPT_TRACKING=off: RecordedRun's every method, recording nothing (tests/e2e/test_pipeline_e2e.py checks that a
    run's outputs are the same with it, and tests/unit/test_null_run.py that it has every method RecordedRun has)."""

    run_id = None
    resumed = False

    def __enter__(self) -> NullRun:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def log_params(self, params: dict) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def end(self, status: str, tags: dict | None = None) -> None:
        pass

    def step_logger(self):
        return lambda step, metrics: None

    def log_range_test(self, csv_path: Path, json_path: Path, png_path: Path, run_name: str) -> None:
        pass

    def start_training(self, params: dict, reports: Path) -> None:
        pass

    def log_model(self, params: dict, weights: Path | None = None) -> str:
        return ""

    def model_id(self) -> str:
        return ""

    def log_training_outputs(self, metrics: dict, reports: Path, step: int, params: dict, weights: Path) -> None:
        pass


def missing_from_null_run() -> list[str]:
    """RecordedRun's public methods that NullRun lacks or takes other arguments to (none, or tracking off would
    reach MLflow)."""
    public = [name for name, _ in inspect.getmembers(RecordedRun, inspect.isfunction) if not name.startswith("_")]
    return [
        name
        for name in [*public, "__enter__", "__exit__"]
        if not hasattr(NullRun, name)
        or list(inspect.signature(getattr(NullRun, name)).parameters)
        != list(inspect.signature(getattr(RecordedRun, name)).parameters)
    ]


class StepLogger:
    """Logs step metrics to the run, skipping steps it already holds (a resumed run recomputes the steps between its
    last checkpoint and the kill; they are identical, and must not appear twice)."""

    def __init__(self, client: mlflow.MlflowClient, run_id: str, resumed: bool, key: str = "train_loss"):
        self.client, self.run_id = client, run_id
        history = client.get_metric_history(run_id, key) if resumed else []
        self.last_logged = max((m.step for m in history), default=0)

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        if step > self.last_logged:
            mlflow.log_metrics(metrics, step=step)


def start_run(
    connection: Connection | None,
    run_name: str,
    stage: str,
    device: torch.device,
    run_id: str | None = None,
    data_meta: dict | None = None,
) -> RecordedRun | NullRun:
    """Continue MLflow run `run_id` where the store holds it, or start a new one named after the named run, tagged
    (a NullRun where tracking is off: no connection)."""
    if connection is None:
        return NullRun()
    mlflow.set_tracking_uri(connection.uri)  # what MLflow's run functions read (the module's docstring)
    # A training run records CPU/GPU utilisation and memory (MLflow's system metrics: psutil, pynvml on NVIDIA)
    system = stage.startswith("train@") and os.environ.get(SYSTEM_METRICS, "on") != "off"
    run = None
    if run_id:
        with contextlib.suppress(mlflow.exceptions.MlflowException):  # another store, or the run was deleted
            run = mlflow.start_run(run_id=run_id, log_system_metrics=system)
    resumed = run is not None
    if not resumed:
        run = mlflow.start_run(experiment_id=connection.experiment_id, run_name=run_name, log_system_metrics=system)
    recorded = RecordedRun(connection, run, run_name, resumed)
    if not resumed:
        recorded.set_tags(run_tags(run_name, stage, device, data_meta, connection.fallback_from))
    return recorded


@contextlib.contextmanager
def training_run(
    on_unreachable: str | None,
    run_name: str,
    device: torch.device,
    data_meta: dict,
    saved_run_id: str | None,
    log: logging.Logger,
) -> Iterator[RecordedRun | NullRun]:
    """A training run's tracking, entered once by the train stage. The store first, before any data is read: a
    server that does not answer fails here (or falls back as `on_unreachable` says; None: this process records
    nothing, as the ranks but the first). Then the run its saved state names, continued where the store still holds
    it, else a new one; once the run has ended well, MLflow's comparison view refreshed."""
    connection = connect(on_unreachable) if on_unreachable is not None else None
    with start_run(connection, run_name, f"train@{run_name}", device, saved_run_id, data_meta) as recorded:
        yield recorded
    view.refresh_view(connection, log)
