"""MLflow: one experiment for the project, one MLflow run per named run, and its trained model in MLflow 3's
Logged Models view (an external model: the weights stay in DVC, and the model says how to get them).

Default store: the SQLite file `mlflow.db` at the project root, addressed by an absolute URI so that runs
launched from DVC's temporary experiment copies (.dvc/tmp/exps/...) land in the same store.
`MLFLOW_TRACKING_URI` overrides it (a team's tracking server).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import sqlalchemy.exc
import torch
from filelock import FileLock

from chargpt.device import describe
from chargpt.errors import TrackingError
from chargpt.io import read_json

log = logging.getLogger(__name__)

EXPERIMENT = "chargpt"
# MLflow 3's UI opens an experiment of this kind on its runs (the model-training view), not on GenAI traces.
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": "One MLflow run per named run of params.yaml: compare val_bpc / test_bpc.",
}


def project_root(cwd: Path | None = None) -> Path:
    """The repository the stages belong to, also when DVC runs them in a temporary copy inside it."""
    cwd = (cwd or Path.cwd()).resolve()
    parts = cwd.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return cwd


def tracking_uri(root: Path | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or local_uri(root)


SECRET_QUERY_KEYS = ("token", "password", "passwd", "secret", "key", "auth", "signature", "credential")


def redact(uri: str) -> str:
    """The URI as it may be shown, logged or stored: a `user:password@` becomes `***@`, and the value of a query
    parameter that names a secret (token, password, key, ...) becomes `***`."""
    parts = urllib.parse.urlsplit(uri)
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    secret = [any(word in k.lower() for word in SECRET_QUERY_KEYS) for k, _ in pairs]
    if "@" not in parts.netloc and not any(secret):
        return uri  # as written (urlunsplit would turn sqlite:////path into sqlite://path)
    netloc = "***@" + parts.netloc.rpartition("@")[2] if "@" in parts.netloc else parts.netloc
    query = urllib.parse.urlencode([(k, "***" if hide else v) for (k, v), hide in zip(pairs, secret)], safe="*/:")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def redact_text(text: str) -> str:
    """Any `scheme://user:password@` inside a message (an error from MLflow or urllib may quote the URI)."""
    return re.sub(r"//[^/@\s]+@", "//***@", text)


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a tracking server that does not answer (MLflow's own retries take minutes). Credentials in the
    URI (`https://user:password@host`) go as HTTP basic auth, as MLflow sends them; urllib would not."""
    if not uri.startswith(("http://", "https://")):
        return
    parts = urllib.parse.urlsplit(uri)
    request = urllib.request.Request(
        urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])).rstrip("/") + "/health"
    )
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username) + ":" + urllib.parse.unquote(parts.password or "")
        request.add_header("Authorization", "Basic " + base64.b64encode(user.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            pass
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError, ValueError) as e:
        raise TrackingError(
            f"MLflow tracking server {redact(uri)} is unreachable ({redact_text(str(getattr(e, 'reason', e)))}); "
            f"start it, or unset MLFLOW_TRACKING_URI to log to the local SQLite store"
        ) from None


def local_uri(root: Path | None = None) -> str:
    # timeout: how long a writer waits for SQLite's lock (default 5 s). Queued experiments (`dvc queue start -j 2`)
    # write to the one store at once, and on a loaded machine 5 s is not always enough.
    return f"sqlite:///{(root or project_root()) / 'mlflow.db'}?timeout=60"


def sqlite_path(uri: str) -> str | None:
    return uri.removeprefix("sqlite:///").split("?")[0] if uri.startswith("sqlite:///") else None


def store_error(uri: str, error: Exception) -> TrackingError:
    """One line for a store that fails: which file or server, and what to do."""
    reason = redact_text(" ".join(str(getattr(error, "orig", None) or error).split()))[:200]
    if db := sqlite_path(uri):
        return TrackingError(
            f"{db}: not a readable MLflow store ({reason}); move it aside to start a new one "
            f"(mv {db} {db}.broken), or set MLFLOW_TRACKING_URI to another store"
        )
    return TrackingError(f"MLflow store {redact(uri)} failed ({reason})")


STORE_ERRORS = (sqlalchemy.exc.SQLAlchemyError, mlflow.exceptions.MlflowException)


TRACKING = "CHARGPT_TRACKING"


def enabled() -> bool:
    """CHARGPT_TRACKING: mlflow (the default) records every run; off records nothing, and changes no output."""
    value = os.environ.get(TRACKING, "mlflow")
    if value not in ("mlflow", "off"):
        raise TrackingError(f"{TRACKING}={value!r}: expected mlflow (the default) or off")
    return value == "mlflow"


def setup(on_unreachable: str = "fail") -> str | None:
    """Point MLflow at the store and select the project's experiment; returns its id (None where tracking is off)."""
    if not enabled():
        return None
    user_uri = os.environ.get("MLFLOW_TRACKING_URI")  # read first: set_tracking_uri() exports it
    uri = tracking_uri()
    try:
        check_reachable(uri)
    except TrackingError as e:
        if on_unreachable != "local":
            raise
        log.warning("%s; logging to the local store %s instead (train.on_tracking_unreachable: local)", e, local_uri())
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.environ["CHARGPT_TRACKING_FALLBACK_FROM"] = redact(uri)  # run_tags() records it on the run
        user_uri, uri = None, local_uri()
    mlflow.set_tracking_uri(uri)
    db = sqlite_path(uri)
    # Stages running at once (dvc queue, -j 2) would both create and migrate a new SQLite store; one would fail.
    lock = FileLock(f"{db}.lock") if db else contextlib.nullcontext()
    try:
        with lock:
            experiment = mlflow.get_experiment_by_name(EXPERIMENT)
            if experiment is None:
                # An absolute artifact location: otherwise a SQLite store puts artifacts under the current
                # directory, which for a DVC temporary copy is deleted after the run.
                artifacts = None if user_uri else (project_root() / "mlartifacts").as_uri()
                mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts, tags=EXPERIMENT_TAGS)
            experiment = mlflow.set_experiment(EXPERIMENT)
            for key, value in EXPERIMENT_TAGS.items():  # a store made by an older version lacks them
                if experiment.tags.get(key) != value:
                    mlflow.set_experiment_tag(key, value)
            return experiment.experiment_id
    except STORE_ERRORS as e:
        raise store_error(uri, e) from None


def git_tags() -> dict[str, str]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=project_root())
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {}
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"mlflow.source.git.commit": commit, "git_commit": commit, "git_dirty": str(dirty).lower()}


def data_tags(meta: dict | None) -> dict[str, str]:
    """The sha256 of each split the run trained and was scored on (data/processed/meta.json)."""
    if not meta:
        return {}
    return {f"data.{name}_sha256": split["sha256"] for name, split in meta.get("splits", {}).items()}


def hardware(device: torch.device) -> str:
    """What a run's speed depends on: the GPU's name, or the CPU's model and torch's thread count."""
    if device.type == "cuda":
        return f"{describe(device)} x {max(1, int(os.environ.get('WORLD_SIZE', 1)))}"
    threads = torch.get_num_threads()
    return f"{describe(device)}, {threads} thread{'s' if threads != 1 else ''}"


def run_tags(run_name: str, stage: str, device: torch.device, data_meta: dict | None = None) -> dict[str, str]:
    fallback = (
        {"tracking_fallback_from": os.environ["CHARGPT_TRACKING_FALLBACK_FROM"]}
        if "CHARGPT_TRACKING_FALLBACK_FROM" in os.environ
        else {}
    )
    return {
        "chargpt.run": run_name,
        "dvc_stage": stage,
        "device": device.type,
        "hardware": hardware(device),
        "torch_version": torch.__version__,
        **git_tags(),
        **data_tags(data_meta),
        **fallback,
    }


def run_exists(run_id: str | None) -> bool:
    if not run_id or not enabled():
        return False
    try:
        mlflow.get_run(run_id)
        return True
    except mlflow.exceptions.MlflowException:
        return False


STEP_METRICS = ("val_probe_bpc", "val_probe_accuracy")  # logged at every eval interval already
MODEL_TYPE = "chargpt byte-level GPT"
# Metrics of a trained model shown in MLflow's model view (the run keeps every metric).
# (A metric logged with the model is the run's too: each is logged once, linked to both.)
MODEL_METRICS = ("val_bpc", "test_bpc", "val_accuracy", "test_accuracy", "val_bpc_dynamic", "test_bpc_dynamic",
                 "val_prefix_bpc", "test_prefix_bpc", "iterations", "train_seconds")  # fmt: skip
SYSTEM_METRICS = "CHARGPT_SYSTEM_METRICS"  # off: no CPU/GPU utilisation and memory metrics in a training run


def weights_note(run_name: str) -> str:
    """Where a model's weights are: DVC holds them, MLflow only points at them."""
    return (
        f"models/{run_name}/model.pt, kept by DVC: `dvc pull train@{run_name}` in a clone, or `dvc artifacts get "
        f"<repo> {run_name}` without one (after `gto register {run_name}`)"
    )


class RecordedRun:
    """One MLflow run of a stage: what the stage records goes through here (a NullRun records nothing)."""

    def __init__(self, run: mlflow.ActiveRun, run_name: str):
        self.run, self.run_name = run, run_name
        self.run_id: str | None = run.info.run_id
        self._model_id: str | None = None

    def __enter__(self) -> RecordedRun:
        return self

    def __exit__(self, *exc) -> None:
        self.run.__exit__(*exc)

    def log_params(self, params: dict) -> None:
        mlflow.log_params(params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """A stage's final metrics, once each: those of MODEL_METRICS linked to the run's model as well."""
        linked = {k: v for k, v in metrics.items() if k in MODEL_METRICS}
        if linked:
            mlflow.log_metrics(linked, step=step, model_id=self.model_id())
        if rest := {k: v for k, v in metrics.items() if k not in MODEL_METRICS}:
            mlflow.log_metrics(rest, step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def end(self, status: str, tags: dict | None = None) -> None:
        """End the run as KILLED or FAILED, with tags saying why."""
        if tags:
            mlflow.set_tags(tags)
        mlflow.end_run(status)

    def step_logger(self, resumed: bool) -> StepLogger:
        return StepLogger(self.run_id, resumed)

    def log_range_test(self, csv_path: Path, json_path: Path, png_path: Path, run_name: str) -> None:
        """The LR range test as a nested run of this run: its curve as step metrics, its plot and files."""
        curve, summary = pd.read_csv(csv_path), read_json(json_path)
        # The suggestion on the training run itself, beside the schedule's bounds it used (resolved.*: not recipe).
        suggested = (("suggested_lr_min", "resolved.range_test_lr_min"), ("suggested_lr", "resolved.range_test_lr_max"))
        mlflow.log_params({param: summary[key] for key, param in suggested if key in summary})
        with mlflow.start_run(run_name=f"{run_name}/lr_range_test", nested=True, tags={"chargpt.run": run_name}):
            mlflow.log_params(summary)
            client, run_id = mlflow.MlflowClient(), mlflow.active_run().info.run_id
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

    def log_model(self, params: dict, weights: Path | None = None) -> str:
        """This run's trained model in MLflow's Logged Models view, linked to the run, with the run's params, the git
        commit, and where the weights are (DVC keeps them: MLflow stores no copy, so no 165 MB a T12 run; `weights`,
        the file, gives its sha256). Returns the model's id."""
        name = self.run_name
        tags = {"chargpt.run": name, "chargpt.weights": weights_note(name), **git_tags()}
        if weights is not None:
            tags["chargpt.model_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
        model = mlflow.create_external_model(
            name=name, source_run_id=self.run_id, params={k: str(v) for k, v in params.items()}, tags=tags,
            model_type=MODEL_TYPE,
        )  # fmt: skip
        self._model_id = model.model_id
        return model.model_id

    def model_id(self) -> str:
        """The model this run logged (the newest, after a retraining), or a new one for a run that trained none here
        (an evaluate of a pulled model whose training run is in another store)."""
        if self._model_id is None:
            found = mlflow.search_logged_models(
                experiment_ids=[self.run.info.experiment_id], filter_string=f"source_run_id = '{self.run_id}'",
                order_by=[{"field_name": "creation_time", "ascending": False}], output_format="list",
            )  # fmt: skip
            self._model_id = found[0].model_id if found else self.log_model({})
        return self._model_id

    def log_training_outputs(self, metrics: dict, reports: Path, step: int) -> None:
        """A finished training run's final metrics (targets never reached left out) and its curve and plots."""
        final = {k: float(v) for k, v in metrics.items() if k not in STEP_METRICS and v is not None}
        self.log_metrics(final, step)
        for name in ("train_curve.tsv", "train_curve.png", "lr_range_test.png"):
            mlflow.log_artifact(str(reports / name), artifact_path="plots" if name.endswith(".png") else None)


class NullRun(RecordedRun):
    """CHARGPT_TRACKING=off: a run that records nothing (tests/e2e/test_tracking.py checks that a run's outputs are the
    same with it)."""

    def __init__(self):
        self.run_id = None

    def __exit__(self, *exc) -> None:
        pass

    def log_params(self, params: dict) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def end(self, status: str, tags: dict | None = None) -> None:
        pass

    def step_logger(self, resumed: bool):
        return lambda step, metrics: None

    def log_range_test(self, csv_path: Path, json_path: Path, png_path: Path, run_name: str) -> None:
        pass

    def log_training_outputs(self, metrics: dict, reports: Path, step: int) -> None:
        pass

    def log_model(self, params: dict, weights: Path | None = None) -> str:
        return ""


class StepLogger:
    """Logs step metrics to the active run, skipping steps it already holds (a resumed run recomputes the
    steps between its last checkpoint and the kill; they are identical, and must not appear twice)."""

    def __init__(self, run_id: str, resumed: bool, key: str = "train_loss"):
        history = mlflow.MlflowClient().get_metric_history(run_id, key) if resumed else []
        self.last_logged = max((m.step for m in history), default=0)

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        if step > self.last_logged:
            mlflow.log_metrics(metrics, step=step)


def start_run(
    run_name: str, stage: str, device: torch.device, run_id: str | None = None, data_meta: dict | None = None
) -> RecordedRun:
    """Continue MLflow run `run_id`, or start a new one named after the named run (a NullRun where tracking is off)."""
    if not enabled():
        return NullRun()
    # A training run records CPU/GPU utilisation and memory (MLflow's system metrics: psutil, pynvml on NVIDIA)
    system = stage.startswith("train@") and os.environ.get(SYSTEM_METRICS, "on") != "off"
    if run_id is not None:
        return RecordedRun(mlflow.start_run(run_id=run_id, log_system_metrics=system), run_name)
    tags = run_tags(run_name, stage, device, data_meta)
    return RecordedRun(mlflow.start_run(run_name=run_name, tags=tags, log_system_metrics=system), run_name)
