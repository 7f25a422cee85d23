"""MLflow: one experiment for the project, one MLflow run per named run.

Default store: the SQLite file `mlflow.db` at the project root, addressed by an absolute URI so that runs
launched from DVC's temporary experiment copies (.dvc/tmp/exps/...) land in the same store.
`MLFLOW_TRACKING_URI` overrides it (a team's tracking server).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from pathlib import Path

import torch
from filelock import FileLock

log = logging.getLogger(__name__)

EXPERIMENT = "chargpt"


def project_root(cwd: Path | None = None) -> Path:
    """The repository the stages belong to, also when DVC runs them in a temporary copy inside it."""
    cwd = (cwd or Path.cwd()).resolve()
    parts = cwd.parts
    for i in range(len(parts) - 2):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return cwd


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or local_uri()


class TrackingError(RuntimeError):
    pass


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a tracking server that does not answer (MLflow's own retries take minutes)."""
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            pass
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        raise TrackingError(f"MLflow tracking server {uri} is unreachable ({getattr(e, 'reason', e)}); "
                            f"start it, or unset MLFLOW_TRACKING_URI to log to the local SQLite store") from None


def local_uri() -> str:
    # timeout: how long a writer waits for SQLite's lock (default 5 s). Queued experiments (`dvc queue start -j 2`)
    # write to the one store at once, and on a loaded machine 5 s is not always enough.
    return f"sqlite:///{project_root() / 'mlflow.db'}?timeout=60"


def setup(on_unreachable: str = "fail") -> str:
    """Point MLflow at the store and select the project's experiment; returns its id."""
    import mlflow

    user_uri = os.environ.get("MLFLOW_TRACKING_URI")  # read first: set_tracking_uri() exports it
    uri = tracking_uri()
    try:
        check_reachable(uri)
    except TrackingError as e:
        if on_unreachable != "local":
            raise
        log.warning("%s; logging to the local store %s instead (train.on_tracking_unreachable: local)", e, local_uri())
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.environ["CHARGPT_TRACKING_FALLBACK_FROM"] = uri  # run_tags() records it on the run
        user_uri, uri = None, local_uri()
    mlflow.set_tracking_uri(uri)
    # Stages running at once (dvc queue, -j 2) would both create and migrate a new SQLite store; one would fail.
    lock = FileLock(f"{uri.removeprefix('sqlite:///').split('?')[0]}.lock") if uri.startswith("sqlite:///") \
        else contextlib.nullcontext()
    with lock:
        experiment = mlflow.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            # An absolute artifact location: otherwise a SQLite store puts artifacts under the current
            # directory, which for a DVC temporary copy is deleted after the run.
            artifacts = None if user_uri else (project_root() / "mlartifacts").as_uri()
            mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts)
        return mlflow.set_experiment(EXPERIMENT).experiment_id


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
        return f"{torch.cuda.get_device_name(device)} x {max(1, int(os.environ.get('WORLD_SIZE', 1)))}"
    model = "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"{model}, {threads} thread{'s' if threads != 1 else ''}"


def run_tags(run_name: str, stage: str, device: torch.device, data_meta: dict | None = None) -> dict[str, str]:
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    fallback = {"tracking_fallback_from": os.environ["CHARGPT_TRACKING_FALLBACK_FROM"]} \
        if "CHARGPT_TRACKING_FALLBACK_FROM" in os.environ else {}
    return {"chargpt.run": run_name, "dvc_stage": stage, "device": device_name, "hardware": hardware(device),
            "torch_version": torch.__version__,
            **git_tags(), **data_tags(data_meta), **fallback}


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def run_exists(run_id: str | None) -> bool:
    import mlflow

    if not run_id:
        return False
    try:
        mlflow.get_run(run_id)
        return True
    except mlflow.exceptions.MlflowException:
        return False


def log_range_test(csv_path: Path, json_path: Path, png_path: Path, run_name: str) -> None:
    """The LR range test as a nested run of the active run: its curve as step metrics, its plot and files."""
    import mlflow
    import pandas as pd

    from chargpt.io import read_json

    curve, summary = pd.read_csv(csv_path), read_json(json_path)
    with mlflow.start_run(run_name=f"{run_name}/lr_range_test", nested=True, tags={"chargpt.run": run_name}):
        mlflow.log_params(summary)
        client, run_id = mlflow.MlflowClient(), mlflow.active_run().info.run_id
        metrics = [mlflow.entities.Metric(key, float(row[key]), 0, int(row["step"]))
                   for row in curve.to_dict("records") for key in ("lr", "loss", "smoothed_loss")]
        for i in range(0, len(metrics), 1000):  # the REST API takes at most 1000 metrics a batch
            client.log_batch(run_id, metrics=metrics[i:i + 1000])
        for path in (csv_path, json_path, png_path):
            mlflow.log_artifact(str(path), artifact_path="lr_range_test")


def log_training_outputs(metrics: dict, reports: Path, step: int) -> None:
    """A finished training run's final metrics (targets never reached left out) and its curve and plots."""
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if k != "val_probe_bpc" and v is not None}, step=step)
    for name in ("train_curve.tsv", "train_curve.png", "lr_range_test.png"):
        mlflow.log_artifact(str(reports / name), artifact_path="plots" if name.endswith(".png") else None)


class StepLogger:
    """Logs step metrics to the active run, skipping steps it already holds (a resumed run recomputes the
    steps between its last checkpoint and the kill; they are identical, and must not appear twice)."""

    def __init__(self, run_id: str, resumed: bool, key: str = "train_loss"):
        import mlflow

        history = mlflow.MlflowClient().get_metric_history(run_id, key) if resumed else []
        self.last_logged = max((m.step for m in history), default=0)

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        import mlflow

        if step > self.last_logged:
            mlflow.log_metrics(metrics, step=step)


def start_run(run_name: str, stage: str, device: torch.device, run_id: str | None = None, data_meta: dict | None = None):
    """Continue MLflow run `run_id`, or start a new one named after the named run."""
    import mlflow

    if run_id is not None:
        return mlflow.start_run(run_id=run_id)
    return mlflow.start_run(run_name=run_name, tags=run_tags(run_name, stage, device, data_meta))
