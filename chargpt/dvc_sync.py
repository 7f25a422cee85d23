"""What dvc.yaml must say that no one should keep by hand, written from the code and params.yaml:

- each stage's code deps: its script and every chargpt module it imports, transitively (imports inside functions
  too), so that `dvc status` reports a stage whenever code it runs has changed;
- pipeline_runs.yaml: every named run (params.yaml's runs and the runs its grids expand to) with the params.yaml
  keys that define it (its own entry and the run it builds on), which the per-run stages iterate over;
- the top-level `plots:`: every run on one chart (a plot that overlays files must name each one).

    chargpt sync-dvc [--params params.yaml] [--dvc-yaml dvc.yaml] [--check]

Everything else in dvc.yaml (commands, data deps, params, outs) is kept as written. --check changes nothing and
exits 1 if anything is stale (a test runs it).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import yaml

from chargpt.config import load_params, run_sources
from chargpt.io import atomic_open

RUNS_FILE = "pipeline_runs.yaml"
HEADER = """\
# The pipeline. Code deps, pipeline_runs.yaml and the plots at the end are written by `chargpt sync-dvc` from the
# stage scripts' imports and from params.yaml (a test fails while they are stale); edit the rest here.
# Per-run stages iterate over pipeline_runs.yaml: each run with the params.yaml keys that define it.
"""
RUNS_HEADER = """\
# Written by `chargpt sync-dvc` from params.yaml: every named run, with the params.yaml entries that define it
# (`own`: its entry; `base`: the run it builds on, itself for a run with none). dvc.yaml's per-run stages track
# both. Do not edit: change params.yaml and run `chargpt sync-dvc`.
"""

# plot id -> (file per run, y column, template, title, x, x label, y label)
PLOTS = {
    "val_bpc": ("train_curve.tsv", "val_probe_bpc", "runs_overlay", "Validation BPC (val probe) by run", "step",
                "step", "val probe BPC (bits per byte)"),
    "val_accuracy": ("train_curve.tsv", "val_probe_accuracy", "runs_overlay", "Validation next-byte accuracy (val "
                     "probe) by run", "step", "step", "val probe accuracy (top-1)"),
    "train_loss": ("train_curve.tsv", "train_loss", "runs_overlay", "Training loss by run", "step", "step",
                   "train loss (nats per byte)"),
    "lr_range_test": ("lr_range_test.csv", "smoothed_loss", "lr_range_log",
                      "LR range test by run (dashed rule: the suggested max LR)", "lr", "learning rate (log scale)",
                      "smoothed training loss (nats per byte)"),
    "lr_range_accuracy": ("lr_range_test.csv", "val_accuracy", "runs_overlay",
                          "LR range test, linear_accuracy runs: val accuracy against the LR", "lr", "learning rate",
                          "val next-byte accuracy (top-1)"),
}


def chargpt_imports(path: Path, root: Path) -> set[str]:
    """The chargpt modules a Python file imports, anywhere in it, as paths relative to `root`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name == "chargpt" or name.startswith("chargpt."):
                module = root / Path(*name.split("."))
                if module.with_suffix(".py").is_file():
                    found.add(str(module.with_suffix(".py").relative_to(root)))
                elif (module / "__init__.py").is_file():
                    found.add(str((module / "__init__.py").relative_to(root)))
    return found


def code_deps(script: str, root: Path) -> list[str]:
    """A stage script and every chargpt module it runs: its imports, theirs, and so on."""
    seen, todo = {script}, [script]
    while todo:
        for module in chargpt_imports(root / todo.pop(), root):
            if module not in seen:
                seen.add(module)
                todo.append(module)
    if any(m.startswith("chargpt/") for m in seen):
        seen.add("chargpt/__init__.py")  # run on every import of the package
    return [script, *sorted(seen - {script})]


def is_code(dep: str) -> bool:
    return dep.endswith(".py") and dep.startswith(("stages/", "chargpt/"))


def stage_script(stage: dict) -> str:
    body = stage.get("do", stage)
    for word in body["cmd"].split():
        if word.startswith("stages/") and word.endswith(".py"):
            return word
    raise ValueError(f"dvc.yaml: cannot find the stage script in {body['cmd']!r}")


def plots_section(runs: list[str]) -> list[dict]:
    return [{plot_id: {"template": template, "title": title, "x": x, "x_label": x_label, "y_label": y_label,
                       "y": {f"reports/{run}/{filename}": column for run in runs}}}
            for plot_id, (filename, column, template, title, x, x_label, y_label) in PLOTS.items()]


def render(dvc_yaml: str, params: dict, root: Path) -> tuple[str, str]:
    """(dvc.yaml, pipeline_runs.yaml) as they must be."""
    spec = yaml.safe_load(dvc_yaml)
    for stage in spec["stages"].values():
        body = stage.get("do", stage)
        data = [d for d in body.get("deps", []) if not (isinstance(d, str) and is_code(d))]
        body["deps"] = code_deps(stage_script(stage), root) + data
    sources = run_sources(params)
    spec["plots"] = plots_section(list(sources))
    runs = {"pipeline_runs": {name: {"own": s.own_key, "base": s.base_key} for name, s in sources.items()}}
    return (HEADER + yaml.safe_dump(spec, sort_keys=False, width=120),
            RUNS_HEADER + yaml.safe_dump(runs, sort_keys=False, width=120))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chargpt sync-dvc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dvc-yaml", default="dvc.yaml")
    parser.add_argument("--check", action="store_true", help="exit 1 if anything is stale (changes nothing)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    path = Path(args.dvc_yaml)
    root = path.resolve().parent
    runs_path = path.parent / RUNS_FILE  # named as dvc.yaml is, relative or absolute
    wanted = dict(zip((path, runs_path), render(path.read_text(), load_params(args.params), root)))
    stale = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
    if args.check:
        if stale:
            sys.exit(f"{', '.join(map(str, stale))}: stale (code deps, runs or plots differ from the code and "
                     f"{args.params}); run `chargpt sync-dvc`")
        return
    for p in stale:
        with atomic_open(p, "w") as f:
            f.write(wanted[p])
        print(f"{p}: rewritten")
