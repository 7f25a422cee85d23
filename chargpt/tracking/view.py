"""MLflow's own screens, opened on the comparison: the saved view of the named runs (by test BPC, with BPC and
accuracy columns, every varied param, and charts), refreshed by each stage, and `chargpt ui`, which publishes it and
starts MLflow's UI on the project's store."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import mlflow
import pandas as pd

from chargpt.errors import TrackingError
from chargpt.tracking import store
from chargpt.tracking.compare import find_project, latest_attempts, load_runs, recipe_params

UI_APP = "chargpt"  # `mlflow ui --app-name chargpt` (tracking/ui_app.py)
LATEST_TAG = "chargpt.latest_attempt"  # on each named run's latest MLflow run only (mark_latest_attempts)
VIEW_KEY = "compare"  # MLflow's shared view: the experiment tag mlflow.sharedViewState.<key>, opened by URL
# The view's metric columns: few, so that the varied params fit on the first screen beside them.
SUMMARY_METRICS = ["val_bpc", "test_bpc", "val_accuracy", "test_accuracy", "val_bpc_dynamic", "test_bpc_dynamic",
                   "iterations"]  # fmt: skip
CHART_METRICS = ["test_bpc", "val_bpc", "test_bpc_dynamic", "val_bpc_dynamic", "test_accuracy", "val_accuracy"]


def varied_params(latest: pd.DataFrame) -> list[str]:
    """The recipe params (section.key) whose value differs between the named runs' latest attempts."""
    # A param one run sets and another lacks (eval.dynamic.* where only some runs evaluate dynamically) differs too.
    varied = [c for c in recipe_params(latest) if latest[c].fillna("(unset)").astype(str).nunique() > 1]
    return sorted(c.removeprefix("params.") for c in varied)


def publish_view(root: Path) -> str | None:
    """Store MLflow's saved view of this project's runs: the named runs by test BPC, with the BPC metrics, iterations
    and every param that varies between runs as columns, and BPC charts first. MLflow's UI opens it from the URL
    (view_path); the experiment's kind tag makes it the model-training UI rather than the GenAI one. Returns the
    experiment's id (None while nothing is recorded)."""
    runs = load_runs(root)
    if runs.empty:
        return None
    latest = latest_attempts(runs)
    client = mlflow.MlflowClient()
    mark_latest_attempts(client, runs, latest)
    metrics = [m for m in SUMMARY_METRICS if f"metrics.{m}" in latest]
    columns = [f"metrics.`{m}`" for m in metrics] + [f"params.`{p}`" for p in varied_params(latest)]

    def chart(kind: str, metric: str, section: str) -> dict:
        common = {"uuid": f"chargpt-{metric}", "type": kind, "metricKey": metric, "metricSectionId": section,
                  "runsCountToCompare": 20, "deleted": False, "isGenerated": False}  # fmt: skip
        line = {"selectedMetricKeys": [metric], "xAxisKey": "step", "scaleType": "linear", "lineSmoothness": 0}
        return common | (line if kind == "LINE" else {})

    def bar(metric: str, section: str) -> dict:
        return chart("BAR", metric, section)

    def line(metric: str, section: str) -> dict:
        return chart("LINE", metric, section)

    charts = [bar(m, "chargpt-bpc") for m in CHART_METRICS if f"metrics.{m}" in latest]
    charts += [
        line("val_probe_bpc", "chargpt-bpc"),
        line("val_probe_accuracy", "chargpt-bpc"),
        line("train_loss", "chargpt-training"),
    ]
    view = {
        # each named run once, as `chargpt compare` shows it: not its earlier attempts, nor its nested LR range tests
        "searchFilter": f"tags.`{LATEST_TAG}` = 'true'",
        "orderByKey": "metrics.`test_bpc`",
        "orderByAsc": True,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": columns,
        "columnOrder": columns,
        "runsHiddenMode": "SHOW_ALL",
        "hideEmptyCharts": True,
        "isAccordionReordered": True,
        "compareRunSections": [
            {"uuid": "chargpt-bpc", "name": "Bits per byte", "display": True, "isReordered": True},
            {"uuid": "chargpt-training", "name": "Training", "display": True, "isReordered": True},
        ],
        "compareRunCharts": charts,
    }
    experiment_id = latest["experiment_id"].iloc[0]
    store_view(client, experiment_id, view)
    return experiment_id


def mark_latest_attempts(client: mlflow.MlflowClient, runs: pd.DataFrame, latest: pd.DataFrame) -> None:
    """Tag each named run's latest attempt, and no other MLflow run, LATEST_TAG=true: a filter MLflow's UI can apply.
    Writes only what changed."""
    column = f"tags.{LATEST_TAG}"
    marked = set(runs.loc[runs[column] == "true", "run_id"]) if column in runs else set()
    wanted = set(latest["run_id"])
    for run_id in sorted(wanted - marked):
        client.set_tag(run_id, LATEST_TAG, "true")
    for run_id in sorted(marked - wanted):
        client.delete_tag(run_id, LATEST_TAG)


def store_view(client: mlflow.MlflowClient, experiment_id: str, state: dict) -> None:
    """Save the view state as the experiment's saved view VIEW_KEY."""
    now = int(time.time() * 1000)
    # MLflow's saved-view envelope: the UI lists it under Views, and opens it from viewStateShareKey in the URL.
    envelope = {"name": "BPC by named run", "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{VIEW_KEY}", json.dumps(envelope))


def stored_view(experiment_tags: dict[str, str]) -> dict | None:
    """The view state store_view saved among an experiment's tags (None where there is none)."""
    envelope = experiment_tags.get(f"mlflow.sharedViewState.{VIEW_KEY}")
    return json.loads(json.loads(envelope)["state"]) if envelope else None


def refresh_view(log: logging.Logger) -> None:
    """publish_view after a stage recorded a run; the view is a convenience, so a failure is a warning only."""
    if not store.enabled():
        return
    try:
        publish_view(store.project_root())
    except (TrackingError, *store.STORE_ERRORS) as e:
        log.warning("could not update MLflow's comparison view: %s", e)


def view_path(experiment_id: str, mode: str = "TABLE") -> str:
    """The URL path (after host:port) of the published view: TABLE or CHART."""
    return (
        f"/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}&workflowType=machine_learning"
        f"&compareRunsMode={mode}"
    )


def models_path(experiment_id: str) -> str:
    """The URL path of the experiment's Logged Models view (its trained models, by their metrics)."""
    return f"/#/experiments/{experiment_id}/models?workflowType=machine_learning"


def ui_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chargpt ui",
        description="MLflow's UI over the project's store (MLflow's server, as the chargpt MLflow app). In a browser "
        "with no choice of its own yet, MLflow's home opens in model-training mode and the experiment on its named "
        "runs by test BPC, with BPC and accuracy columns. It serves at http://HOST:PORT (default "
        "http://127.0.0.1:5000) and prints three links: that table, its BPC charts, and the trained models.",
    )
    parser.add_argument("--port", type=int, default=5000, help="the port it serves on (default 5000)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="the address it serves on (default 127.0.0.1: this machine)"
    )
    parser.add_argument("--repo", type=Path, help="the project (default: the one holding the current directory)")
    return parser


def ui_main(argv: list[str] | None = None) -> None:
    """Publish the comparison view, print its URLs, then run `mlflow ui` on the project's store."""
    args = ui_parser().parse_args(argv)
    root = args.repo.resolve() if args.repo else find_project()
    experiment_id = publish_view(root)
    if experiment_id is None:
        raise TrackingError(
            f"{root}: no named run recorded yet; `dvc repro evaluate@quickstart` trains and records one"
        )
    uri = store.tracking_uri(root)
    server = uri.startswith(("http://", "https://"))  # MLFLOW_TRACKING_URI names a team's tracking server
    base = store.redact(uri).rstrip("/") if server else f"http://{args.host}:{args.port}"
    print(
        f"runs by test BPC:  {base}{view_path(experiment_id)}\n"
        f"their BPC charts:  {base}{view_path(experiment_id, 'CHART')}\n"
        f"trained models:    {base}{models_path(experiment_id)}",
        flush=True,
    )
    if server:  # its own UI serves the runs; a local one cannot open a server's store
        print(f"(the runs are on the tracking server {store.redact(uri)}: its UI serves these links; started as "
              f"`mlflow server --app-name {UI_APP}`, it opens on them without one)", flush=True)  # fmt: skip
        return
    if not any(e.name == UI_APP for e in entry_points(group="mlflow.app")):
        raise TrackingError(
            f"MLflow finds no '{UI_APP}' app (the mlflow.app entry point in pyproject.toml): this environment "
            f"predates it; reinstall the project: pip install -e ."
        )
    # the chargpt app: MLflow's server, whose page seeds a new browser with this view (tracking/ui_app.py)
    # one worker: a UI for this machine's user, up in about half the time MLflow's default four take
    command = ["mlflow", "ui", "--app-name", UI_APP, "--backend-store-uri", uri, "--workers", "1", "--host", args.host]
    os.execvp(sys.executable, [sys.executable, "-m", *command, "--port", str(args.port)])
