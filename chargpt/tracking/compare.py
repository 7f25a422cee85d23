"""Compare the named runs: one row per run (its latest MLflow attempt), sorted by test BPC in the reference protocol.

    chargpt compare [--format markdown|csv|json] [--output FILE] [--runs NAME ...] [--details] [--diff-from RUN]

Columns: the recipe (optimizer, schedule, LR range, momentum range, weight decay), the iterations, val and test BPC
in the reference protocol every run is scored under (val_bpc_ref, test_bpc_ref: consecutive windows of the run's
context), the run's own protocol (its eval.stride and precision) and its figures in it (val_bpc, test_bpc, next-byte
accuracy), the iterations to each BPC target any run logged (iters_to_bpc_<t>), and the training wall time. A run
evaluated before the reference figure existed shows its own figure there where its own protocol was the reference,
and "not scored" where it was not (rerun its evaluate stage to score it).
--details adds the hardware (the run's device tag) and the command that reproduces the row; --diff-from RUN
adds each run's config as its difference from RUN's (the params that differ, as section.key=value).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from chargpt.errors import ConfigError, TrackingError
from chargpt.evaluation.config import protocol_label
from chargpt.io import atomic_open
from chargpt.pipeline.config import load_params, run_sources
from chargpt.tracking import connection as store
from chargpt.tracking import lazy_import

mlflow, pd = lazy_import("mlflow"), lazy_import("pandas")

COLUMNS = {  # output column -> MLflow field; None: derived from several fields
    "run": "tags.chargpt.run",
    "optimizer": "params.optimizer.name",
    "schedule": "params.schedule.name",
    "lr": None,  # lr_min -> resolved lr_max
    "momentum": None,  # max -> min
    "weight_decay": "params.optimizer.weight_decay",
    "iterations": "metrics.iterations",
    "val_bpc_ref": None,  # the reference protocol (reference_figures)
    "test_bpc_ref": None,
    "protocol": None,  # the run's own: stride of context, precision
    "val_bpc": "metrics.val_bpc",
    "test_bpc": "metrics.test_bpc",
    "val_accuracy": "metrics.val_accuracy",
    "test_accuracy": "metrics.test_accuracy",
    "train_seconds": "metrics.train_seconds",
    "status": "status",
}
TARGET_PREFIX = "metrics.iters_to_bpc_"
NOT_SCORED = "not scored"  # a reference figure a run evaluated before it existed lacks (its own protocol differs)
# Params that describe the run's outcome or bookkeeping, not its recipe: left out of config diffs.
NOT_RECIPE = (
    "params.resolved.",
    "params.model.n_params",
    "params.train.val_probe_bytes",
    "params.eval.resolved_stride",
)


def find_project(start: Path | None = None) -> Path:
    """The chargpt project holding `start` (the current directory): the nearest folder with dvc.yaml and params.yaml."""
    here = store.project_root(start)
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file() and (folder / "params.yaml").is_file():
            return folder
    raise TrackingError(
        f"{here}: not inside a chargpt project (no dvc.yaml and params.yaml here or above); run it "
        f"in the project, or pass --repo"
    )


def load_runs(root: Path, uri: str | None = None) -> pd.DataFrame:
    """Every named run's MLflow runs in the project's experiment (nested LR range tests left out), from the store at
    `uri` (default: the project's). Reads the store only: never creates one."""
    uri = uri or store.tracking_uri(root)
    if (db := store.sqlite_path(uri)) and not Path(db).is_file():
        raise TrackingError(
            f"{db}: no MLflow store: nothing has been recorded in {root} yet (`dvc repro "
            f"evaluate@quickstart` trains and records a run), or set MLFLOW_TRACKING_URI"
        )
    try:
        experiment = mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name(store.EXPERIMENT)
        if experiment is None:
            return pd.DataFrame()
        with store.fluent_uri(uri):  # mlflow.search_runs, the one reader that builds the DataFrame, takes no URI
            runs = mlflow.search_runs(experiment_ids=[experiment.experiment_id], output_format="pandas")
    except store.store_errors() as e:
        raise store.store_error(uri, e) from None
    if runs.empty:
        return runs
    if "tags.mlflow.parentRunId" in runs:
        runs = runs[runs["tags.mlflow.parentRunId"].isna()]
    return runs


def _field(runs: pd.DataFrame, field: str) -> pd.Series:
    return runs[field] if field in runs else pd.Series([None] * len(runs), index=runs.index, dtype=object)


def latest_attempts(runs: pd.DataFrame, names: list[str] | None = None) -> pd.DataFrame:
    """The latest MLflow run of each named run (of `names` only, if given)."""
    if not runs.empty and names:
        runs = runs[runs["tags.chargpt.run"].isin(names)]
    return runs if runs.empty else runs.sort_values("start_time", ascending=False).drop_duplicates("tags.chargpt.run")


def comparison_table(runs: pd.DataFrame, names: list[str] | None = None) -> pd.DataFrame:
    """One row per named run (its latest attempt), sorted by test BPC (runs without one last)."""
    latest = latest_attempts(runs, names)
    if latest.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    table = pd.DataFrame({name: _field(latest, field) for name, field in COLUMNS.items() if field})
    schedule = _field(latest, "params.schedule.name").fillna("onecycle")  # runs from before the cosine option
    table["schedule"] = schedule
    lr_min = pd.to_numeric(_field(latest, "params.schedule.lr_min"), errors="coerce")
    lr_max = pd.to_numeric(_field(latest, "params.resolved.lr_max"), errors="coerce")
    table["lr"] = [f"{_cell(lo)} -> {_cell(hi)}" for lo, hi in zip(lr_min, lr_max)]
    mom_max, mom_min = _field(latest, "params.schedule.momentum_max"), _field(latest, "params.schedule.momentum_min")
    # cosine holds momentum (beta1) at momentum_max
    table["momentum"] = [f"{hi}" if s == "cosine" else f"{hi} -> {lo}" for hi, lo, s in zip(mom_max, mom_min, schedule)]
    table["weight_decay"] = pd.to_numeric(table["weight_decay"], errors="coerce")
    stride = pd.to_numeric(_field(latest, "params.eval.resolved_stride"), errors="coerce")
    context = pd.to_numeric(_field(latest, "params.model.context"), errors="coerce")
    own_is_reference = stride == context
    for split in ("val", "test"):
        table[f"{split}_bpc_ref"] = reference_figures(latest, split, own_is_reference)
    table["protocol"] = [_protocol(*row) for row in zip(_field(latest, "tags.chargpt.protocol"), stride, context,
                                                         _field(latest, "params.resolved.precision"))]  # fmt: skip
    table["iterations"] = table["iterations"].astype("Int64")
    targets = sorted(
        (c for c in latest.columns if c.startswith(TARGET_PREFIX)), key=lambda c: -float(c.removeprefix(TARGET_PREFIX))
    )
    for column in targets:
        table[column.removeprefix("metrics.")] = latest[column].astype("Int64")
    dynamic = [
        c
        for c in ("val_bpc_dynamic", "test_bpc_dynamic", "val_accuracy_dynamic", "test_accuracy_dynamic")
        if f"metrics.{c}" in latest
    ]
    for column in dynamic:  # beside the static figures, never in their place
        table[column] = latest[f"metrics.{column}"]
    order = [*list(COLUMNS)[:-2], *dynamic, *(c.removeprefix("metrics.") for c in targets), "train_seconds", "status"]
    # by the reference figure; the runs without one after, by their own
    table = table[order].assign(_key=pd.to_numeric(table["test_bpc_ref"], errors="coerce"))
    table = table.sort_values(["_key", "test_bpc", "run"], na_position="last")
    return table.drop(columns="_key").reset_index(drop=True)


def reference_figures(latest: pd.DataFrame, split: str, own_is_reference: pd.Series) -> list:
    """A split's BPC in the reference protocol per run: logged by evaluate, or, for a run evaluated before it was,
    its own figure where its own protocol was the reference, else NOT_SCORED; None where it has no figure at all."""
    logged, own = _field(latest, f"metrics.{split}_bpc_ref"), _field(latest, f"metrics.{split}_bpc")
    return [
        ref if pd.notna(ref) else figure if pd.isna(figure) or same else NOT_SCORED
        for ref, figure, same in zip(logged, own, own_is_reference)
    ]


def _protocol(tag, stride, context, precision) -> str:
    """The run's own protocol: its tag, or, for a run evaluated before the tag, what its params say."""
    if isinstance(tag, str):
        return tag
    if pd.isna(stride) or pd.isna(context):
        return ""
    return protocol_label(int(stride), int(context), precision if isinstance(precision, str) else None)


def reproduce_command(row: pd.Series) -> str:
    """The `dvc exp run` that reproduces a run: its corpus when it is not the default enwik8, and its stage."""
    from chargpt.data.config import ENWIK8_URL

    url = row.get("params.data.url")
    data = f"-S data.url={url} -S data.checksums=null " if isinstance(url, str) and url != ENWIK8_URL else ""
    return f"dvc exp run {data}evaluate@{row['tags.chargpt.run']}"


def recipe_params(latest: pd.DataFrame) -> list[str]:
    """The MLflow param columns that state a run's recipe: not its outcome or bookkeeping, not the corpus."""
    return [
        c
        for c in latest.columns
        if c.startswith("params.") and not c.startswith(NOT_RECIPE) and not c.startswith("params.data.")
    ]


def config_diff(latest: pd.DataFrame, base_run: str) -> list[str]:
    """Per run, its recipe params that differ from `base_run`'s, as `section.key=value; ...`. A key the run
    did not record (logged by an older version, before the key existed) is left out: it says nothing."""
    recipe = recipe_params(latest)
    base = latest[latest["tags.chargpt.run"] == base_run]
    if base.empty:
        raise SystemExit(f"--diff-from {base_run}: no such run among {sorted(latest['tags.chargpt.run'])}")
    base = base.iloc[0]
    diffs = []
    for _, row in latest.iterrows():
        changed = sorted(
            f"{c.removeprefix('params.')}={row[c]}"
            for c in recipe
            if not pd.isna(row[c]) and str(row[c]) != str(base[c])
        )
        diffs.append("; ".join(changed) if row["tags.chargpt.run"] != base_run else f"(the base: {base_run})")
    return diffs


def detailed_table(runs: pd.DataFrame, names: list[str] | None, diff_from: str | None) -> pd.DataFrame:
    """comparison_table plus the hardware, the command that reproduces each row and, with diff_from, its config diff."""
    table = comparison_table(runs, names)
    if table.empty:
        return table
    latest = latest_attempts(runs, names).set_index("tags.chargpt.run", drop=False).loc[table["run"]]
    if diff_from:
        table.insert(1, "config_diff", config_diff(latest, diff_from))
    table["hardware"] = list(_field(latest, "tags.hardware").fillna(_field(latest, "tags.device")))
    table["command"] = [reproduce_command(row) for _, row in latest.iterrows()]
    return table


def render(table: pd.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "json":
        return table.to_json(orient="records", indent=2) + "\n"
    rows = [[_cell(v) for v in row] for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-2 else f"{value:.5f}".rstrip("0").rstrip(".")  # eval.json's rounding
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chargpt compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--format", choices=["markdown", "csv", "json"], default="markdown")
    parser.add_argument("--output", help="write to this file instead of standard output")
    parser.add_argument("--runs", nargs="+", metavar="NAME", help="only these named runs (default: all)")
    parser.add_argument("--repo", type=Path, help="the project (default: the one holding the current directory)")
    parser.add_argument("--details", action="store_true", help="add the hardware and the command of each row")
    parser.add_argument("--diff-from", metavar="RUN", help="add each run's config as its difference from RUN's")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    root = args.repo.resolve() if args.repo else find_project()
    runs = load_runs(root)
    if args.runs:
        known = set(run_sources(load_params(root / "params.yaml"))) | set(_field(runs, "tags.chargpt.run").dropna())
        if unknown := [r for r in args.runs if r not in known]:
            raise ConfigError(
                f"--runs: {unknown} not defined in {root / 'params.yaml'} nor recorded; defined: {sorted(known)}"
            )
    table = (
        detailed_table(runs, args.runs, args.diff_from)
        if args.details or args.diff_from
        else comparison_table(runs, args.runs)
    )
    text = render(table, args.format)
    if args.output:
        with atomic_open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
