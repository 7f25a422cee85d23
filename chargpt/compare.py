"""Compare the named runs: one row per run (its latest MLflow attempt), sorted by test BPC.

    chargpt compare [--format markdown|csv|json] [--output FILE]
"""

from __future__ import annotations

import argparse
import math
import sys

import pandas as pd

from chargpt import tracking
from chargpt.io import atomic_open

COLUMNS = {  # output column -> MLflow field
    "run": "tags.chargpt.run",
    "optimizer": "params.optimizer.name",
    "lr_min": "params.schedule.lr_min",
    "lr_max": "params.resolved.lr_max",
    "momentum": None,  # max -> min, from two params
    "weight_decay": "params.optimizer.weight_decay",
    "iterations": "metrics.iterations",
    "val_bpc": "metrics.val_bpc",
    "test_bpc": "metrics.test_bpc",
    "train_seconds": "metrics.train_seconds",
    "status": "status",
}


def load_runs() -> pd.DataFrame:
    """Every named run's MLflow runs in the project's experiment (nested LR range tests left out)."""
    import mlflow

    tracking.setup()
    runs = mlflow.search_runs(experiment_names=[tracking.EXPERIMENT], output_format="pandas")
    if runs.empty:
        return runs
    if "tags.mlflow.parentRunId" in runs:
        runs = runs[runs["tags.mlflow.parentRunId"].isna()]
    return runs


def comparison_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per named run (its latest attempt), sorted by test BPC (runs without one last)."""
    if runs.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    latest = runs.sort_values("start_time", ascending=False).drop_duplicates("tags.chargpt.run")
    table = pd.DataFrame({name: latest.get(field) for name, field in COLUMNS.items() if field})
    table["momentum"] = latest.get("params.schedule.momentum_max").astype(str) + " -> " + \
        latest.get("params.schedule.momentum_min").astype(str)
    for column in ("lr_max", "lr_min", "weight_decay"):
        table[column] = pd.to_numeric(table[column], errors="coerce")
    table["iterations"] = table["iterations"].astype("Int64")
    return table[list(COLUMNS)].sort_values(["test_bpc", "run"], na_position="last").reset_index(drop=True)


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
        return f"{value:.4g}" if abs(value) < 1e-2 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="chargpt compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", choices=["markdown", "csv", "json"], default="markdown")
    parser.add_argument("--output", help="write to this file instead of standard output")
    args = parser.parse_args(argv)
    text = render(comparison_table(load_runs()), args.format)
    if args.output:
        with atomic_open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
