"""Which named runs are trained, up to date or stale, and why: `dvc status` for a project where most runs have never
run, one line per run.

    chargpt runs [--all] [--params params.yaml]

A run counts as trained once dvc.lock records its train stage (`dvc repro` or `dvc exp run`, then `dvc exp apply`
or a commit). For those, DVC's own status of the run's three stages says whether anything they depend on changed
since (code, params, data) or an output is missing; `--all` lists the runs never trained too.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import yaml

from chargpt.pipeline.config import load_params, run_sources
from chargpt.pipeline.stage import model_path

PER_RUN_STAGES = ("lr_range_test", "train", "evaluate")


@dataclass
class RunStatus:
    run: str
    trained: str  # "yes", "not pulled" (dvc.lock names the model, the workspace lacks it), "no"
    state: str  # "up to date", "stale", "not run"
    why: str  # what changed, or what to run


def locked_stages(root: Path) -> set[str]:
    """The stages the project's dvc.lock records (none where there is no readable lock)."""
    try:
        return set((yaml.safe_load((root / "dvc.lock").read_text()) or {}).get("stages", {}))
    except (OSError, yaml.YAMLError, AttributeError):
        return set()


def describe(changes: list) -> str:
    """DVC's status entries of one stage ({"changed deps": {path: what}}, params nested, "changed command") as text."""
    parts = []
    for change in changes:
        if isinstance(change, str):  # "changed command", "always changed"
            parts.append(change)
            continue
        for kind, items in change.items():
            for path, what in items.items():
                if isinstance(what, dict):  # params: {file: {key: "modified"}}
                    parts += [f"param {key} {status}" for key, status in what.items()]
                else:
                    parts.append(f"{path} {what}" if kind == "changed deps" else f"output {path} {what}")
    return ", ".join(parts)


def run_statuses(root: Path, runs: list[str], dvc_status: dict) -> list[RunStatus]:
    """One RunStatus per run, from dvc.lock and `dvc_status` (DVC's status of the locked runs' stages)."""
    locked, out = locked_stages(root), []
    for run in runs:
        if f"train@{run}" not in locked:
            out.append(RunStatus(run, "no", "not run", f"dvc repro evaluate@{run}"))
            continue
        trained = "yes" if (root / model_path(run)).exists() else "not pulled"
        stale = {s: describe(dvc_status[f"{s}@{run}"]) for s in PER_RUN_STAGES if dvc_status.get(f"{s}@{run}")}
        if f"evaluate@{run}" not in locked:
            stale.setdefault("evaluate", "never run")
        why = "; ".join(f"{stage}: {what}" for stage, what in stale.items())
        if trained == "not pulled":
            why = f"dvc pull train@{run}" + (f"; {why}" if why else "")
        out.append(RunStatus(run, trained, "stale" if stale else "up to date", why))
    return out


def dvc_status_of(root: Path, runs: list[str]) -> dict:
    """DVC's own status (its Python API, what `dvc status` prints) of the runs' stages that dvc.lock records."""
    from dvc.repo import Repo

    locked = locked_stages(root)
    targets = [f"{s}@{r}" for r in runs for s in PER_RUN_STAGES if f"{s}@{r}" in locked]
    if not targets:
        return {}
    with Repo(str(root)) as repo:
        return repo.status(targets=targets)


def table(statuses: list[RunStatus]) -> str:
    rows = [("run", "trained", "state", "why / next"), *((s.run, s.trained, s.state, s.why) for s in statuses)]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3] for row in rows
    ).rstrip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chargpt runs",
        description="Which named runs are trained, up to date or stale, and why (DVC's status, one line a run).",
    )
    parser.add_argument("--all", action="store_true", help="also list the runs never trained")
    parser.add_argument("--params", default="params.yaml")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    root = Path(args.params).resolve().parent
    runs = list(run_sources(load_params(args.params), args.params))
    statuses = run_statuses(root, runs, dvc_status_of(root, runs))
    shown = statuses if args.all else [s for s in statuses if s.trained != "no"]
    if shown:
        print(table(shown))
    untrained = len(statuses) - sum(s.trained != "no" for s in statuses)
    if not args.all:
        print(f"{len(statuses)} runs defined, {len(statuses) - untrained} trained"
              + (f"; `chargpt runs --all` lists the other {untrained}" if untrained else ""))  # fmt: skip
