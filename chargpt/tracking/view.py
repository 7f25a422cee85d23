"""MLflow's own screens, opened on the comparison: the saved view of the named runs (by test BPC in the reference
protocol, with each run's own protocol beside it, BPC and accuracy columns, every varied param, and charts), refreshed
by each stage and by `chargpt ui` (tracking/ui.py)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from chargpt.errors import TrackingError
from chargpt.tracking import lazy_import
from chargpt.tracking.compare import NOT_SCORED, comparison_table, latest_attempts, load_runs, recipe_params
from chargpt.tracking.connection import Connection, project_root, store_errors, tracking_uri
from chargpt.tracking.tags import PROTOCOL_TAG

mlflow, pd = lazy_import("mlflow"), lazy_import("pandas")

LATEST_TAG = "chargpt.latest_attempt"  # on each named run's latest MLflow run only (mark_latest_attempts)
VIEW_KEY = "compare"  # MLflow's shared view: the experiment tag mlflow.sharedViewState.<key>, opened by URL
# The view's metric columns: few, so that the varied params fit on the first screen beside them. The reference
# protocol's figures first (the column the view sorts on), then the run's own protocol (PROTOCOL_TAG) and figures.
REFERENCE_METRICS = ["test_bpc_ref", "val_bpc_ref"]
SUMMARY_METRICS = ["test_bpc", "val_bpc", "test_accuracy", "val_accuracy", "test_bpc_dynamic", "val_bpc_dynamic",
                   "iterations"]  # fmt: skip
CHART_METRICS = ["test_bpc_ref", "val_bpc_ref", "test_bpc", "val_bpc", "test_bpc_dynamic", "val_bpc_dynamic",
                 "test_accuracy", "val_accuracy"]  # fmt: skip


def varied_params(latest: pd.DataFrame) -> list[str]:
    """The recipe params (section.key) whose value differs between the named runs' latest attempts."""
    # A param one run sets and another lacks (eval.dynamic.* where only some runs evaluate dynamically) differs too.
    varied = [c for c in recipe_params(latest) if latest[c].fillna("(unset)").astype(str).nunique() > 1]
    return sorted(c.removeprefix("params.") for c in varied)


def publish_view(root: Path, uri: str | None = None) -> str | None:
    """Store MLflow's saved view of this project's runs: the named runs by test BPC, with the BPC metrics, iterations
    and every param that varies between runs as columns, and BPC charts first. MLflow's UI opens it from the URL
    (view_path); the experiment's kind tag makes it the model-training UI rather than the GenAI one. Returns the
    experiment's id (None while nothing is recorded). uri: the store (default: the project's)."""
    uri = uri or tracking_uri(root)
    runs = load_runs(root, uri)
    if runs.empty:
        return None
    latest = latest_attempts(runs)
    client = mlflow.MlflowClient(tracking_uri=uri)
    mark_latest_attempts(client, runs, latest)
    backfill_reference(client, latest, comparison_table(runs))
    columns = [f"metrics.`{m}`" for m in REFERENCE_METRICS] + [f"tags.`{PROTOCOL_TAG}`"]
    columns += [f"metrics.`{m}`" for m in SUMMARY_METRICS if f"metrics.{m}" in latest]
    columns += [f"params.`{p}`" for p in varied_params(latest)]

    def chart(kind: str, metric: str, section: str) -> dict:
        common = {"uuid": f"chargpt-{metric}", "type": kind, "metricKey": metric, "metricSectionId": section,
                  "runsCountToCompare": 20, "deleted": False, "isGenerated": False}  # fmt: skip
        line = {"selectedMetricKeys": [metric], "xAxisKey": "step", "scaleType": "linear", "lineSmoothness": 0}
        return common | (line if kind == "LINE" else {})

    def bar(metric: str, section: str) -> dict:
        return chart("BAR", metric, section)

    def line(metric: str, section: str) -> dict:
        return chart("LINE", metric, section)

    charts = [bar(m, "chargpt-bpc") for m in CHART_METRICS if m in REFERENCE_METRICS or f"metrics.{m}" in latest]
    charts += [
        line("val_probe_bpc", "chargpt-bpc"),
        line("val_probe_accuracy", "chargpt-bpc"),
        line("train_loss", "chargpt-training"),
    ]
    view = {
        # each named run once, as `chargpt compare` shows it: not its earlier attempts, nor its nested LR range tests
        "searchFilter": f"tags.`{LATEST_TAG}` = 'true'",
        "orderByKey": "metrics.`test_bpc_ref`",
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


def backfill_reference(client: mlflow.MlflowClient, latest: pd.DataFrame, table: pd.DataFrame) -> None:
    """Runs evaluated before the reference figure existed, as `chargpt compare` shows them: where their own protocol
    was the reference, that figure under the reference's name (the same number: nothing is scored again); and each
    one's protocol tag, saying where the reference was not scored. Writes only what is missing."""
    rows = table.set_index("run")
    for _, run in latest.iterrows():
        name, run_id = run["tags.chargpt.run"], run["run_id"]
        if name not in rows.index or pd.notna(run.get(f"metrics.{REFERENCE_METRICS[0]}")):
            continue
        row, step = rows.loc[name], run.get("metrics.iterations")
        for metric in REFERENCE_METRICS:
            if isinstance(row[metric], float) and pd.notna(row[metric]):
                client.log_metric(run_id, metric, row[metric], step=int(step) if pd.notna(step) else 0)
        if pd.isna(run.get(f"tags.{PROTOCOL_TAG}")) and row["protocol"]:
            unscored = any(row[m] == NOT_SCORED for m in REFERENCE_METRICS)
            client.set_tag(run_id, PROTOCOL_TAG, row["protocol"] + ("; reference not scored" if unscored else ""))


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


def refresh_view(connection: Connection | None, log: logging.Logger) -> None:
    """publish_view after a stage recorded a run (none where tracking is off: no connection); the view is a
    convenience, so a failure is a warning only."""
    if connection is None:
        return
    try:
        publish_view(project_root(), connection.uri)
    except (TrackingError, *store_errors()) as e:
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
