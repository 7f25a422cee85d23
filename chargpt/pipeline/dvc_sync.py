"""What dvc.yaml must say that no one should keep by hand, written from the code and params.yaml:

- each stage's code deps: its script and every chargpt module it imports, transitively (imports inside functions
  too), so that `dvc status` reports a stage whenever code it runs has changed; but not the reporting package
  (chargpt/tracking/: MLflow, the comparison, the saved view, PNG plots), which computes no result;
- pipeline_runs.yaml: every named run (params.yaml's runs and the runs its grids expand to) with the params.yaml
  keys that define it (its own entry and the run it builds on), which the per-run stages iterate over;
- the top-level `plots:`: every run on one chart (a plot that overlays files must name each one);
- the top-level `artifacts:`: each named run's model (DVC's model registry: `dvc artifacts get <repo> <run>` fetches
  it without a clone, and DVC Studio and GTO list it), described and labelled from the run's resolved recipe.

    chargpt sync-dvc [--params params.yaml] [--dvc-yaml dvc.yaml] [--check | --report]

Everything else in dvc.yaml (commands, data deps, params, outs) keeps its content, but the file is written anew
by yaml.safe_dump (HEADER on top): comments and layout of a hand edit do not survive. --check changes nothing and
exits 1 if anything is stale (a test runs it).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import yaml

from chargpt.errors import ConfigError
from chargpt.io import atomic_open
from chargpt.pipeline.config import RunConfig, load_params, resolve_run, run_sources

RUNS_FILE = "pipeline_runs.yaml"
HEADER = """\
# The pipeline. Code deps, pipeline_runs.yaml and the plots at the end are written by `chargpt sync-dvc` from the
# stage scripts' imports and from params.yaml (a test fails while they are stale); edit the rest here.
# Per-run stages iterate over pipeline_runs.yaml: each run with the params.yaml keys that define it.
"""
RUNS_HEADER = """\
# Written by `chargpt sync-dvc` from params.yaml: every named run, with the params.yaml entries that define it
# (`own`: its entry; `base`: the run it builds on, itself for a run with none; `root`: the first run of its chain of
# bases). dvc.yaml's per-run stages track all three. Do not edit: change params.yaml and run `chargpt sync-dvc`.
"""

# plot id -> (file per run, y column, template, title, x, x label, y label)
PLOTS = {
    "val_bpc": (
        "train_curve.tsv",
        "val_probe_bpc",
        "runs_overlay",
        "Validation BPC (val probe) by run",
        "step",
        "step",
        "val probe BPC (bits per byte)",
    ),
    "val_accuracy": (
        "train_curve.tsv",
        "val_probe_accuracy",
        "runs_overlay",
        "Validation next-byte accuracy (val probe) by run",
        "step",
        "step",
        "val probe accuracy (top-1)",
    ),
    "train_loss": (
        "train_curve.tsv",
        "train_loss",
        "runs_overlay",
        "Training loss by run",
        "step",
        "step",
        "train loss (nats per byte)",
    ),
    "lr_range_test": (
        "lr_range_test.csv",
        "smoothed_loss",
        "lr_range_log",
        "LR range test by run (dashed rule: the suggested max LR)",
        "lr",
        "learning rate (log scale)",
        "smoothed training loss (nats per byte)",
    ),
    "lr_range_accuracy": (
        "lr_range_test.csv",
        "val_accuracy",
        "runs_overlay",
        "LR range test, linear_accuracy runs: val accuracy against the LR",
        "lr",
        "learning rate",
        "val next-byte accuracy (top-1)",
    ),
}


REPORTING = "chargpt/tracking/"  # what reports results and computes none: no stage's dep (chargpt/tracking/__init__.py)


def _import_nodes(tree: ast.AST):
    """Every import statement of a module, in functions too, but not under `if TYPE_CHECKING:` (never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in _import_nodes(child))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _import_nodes(node)


DYNAMIC_IMPORTS = {"import_module", "__import__", "spec_from_file_location", "run_path", "run_module"}


def refuse_unseen_imports(tree: ast.AST, path: Path, root: Path) -> None:
    """An import the scan below cannot follow would leave a module out of a stage's deps, and DVC would then reuse
    outputs that code has changed: a relative import, or a module named at run time (importlib, __import__, runpy)."""
    where = path.relative_to(root) if path.is_relative_to(root) else path
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            written = "." * node.level + (node.module or "")
            raise ConfigError(
                f"{where}:{node.lineno}: relative import `from {written} import ...`; chargpt sync-dvc follows "
                f"absolute imports only: write `from chargpt.... import ...`"
            )
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if name in DYNAMIC_IMPORTS:
                raise ConfigError(
                    f"{where}:{node.lineno}: {name}() imports a module named at run time, which chargpt sync-dvc "
                    f"cannot list as a stage's dep; import it with an import statement"
                )


def chargpt_imports(path: Path, root: Path) -> set[str]:
    """The chargpt modules a Python file imports when it runs, as paths relative to `root`, with the package
    __init__.py files Python runs on the way (chargpt/__init__.py, chargpt/train/__init__.py, ...). A file with an
    import the scan cannot follow is refused (refuse_unseen_imports)."""
    found = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    refuse_unseen_imports(tree, path, root)
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            names = []
        for name in names:
            if name == "chargpt" or name.startswith("chargpt."):
                parts = name.split(".")
                module = root / Path(*parts)
                if module.with_suffix(".py").is_file():
                    found.add(str(module.with_suffix(".py").relative_to(root)))
                elif (module / "__init__.py").is_file():
                    found.add(str((module / "__init__.py").relative_to(root)))
                else:
                    continue
                found |= {
                    str(Path(*parts[:i], "__init__.py"))
                    for i in range(1, len(parts))
                    if (root / Path(*parts[:i], "__init__.py")).is_file()
                }
    return found


def code_deps(script: str, root: Path) -> list[str]:
    """A stage script and every chargpt module it runs, its imports, theirs, and so on, but for the reporting
    package (REPORTING): its code cannot change a stage's results (an import contract keeps the results code from
    importing it, and tests/e2e/test_pipeline_e2e.py checks that a run's outputs are the same without it)."""
    seen, todo = {script}, [script]
    while todo:
        for module in chargpt_imports(root / todo.pop(), root):
            if module not in seen and not module.startswith(REPORTING):
                seen.add(module)
                todo.append(module)
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
    return [
        {
            plot_id: {
                "template": template,
                "title": title,
                "x": x,
                "x_label": x_label,
                "y_label": y_label,
                "y": {f"reports/{run}/{filename}": column for run in runs},
            }
        }
        for plot_id, (filename, column, template, title, x, x_label, y_label) in PLOTS.items()
    ]


def artifact(cfg: RunConfig) -> dict:
    """A run's model as a DVC artifact: what it is, in a line, and labels to filter by."""
    m, o, t = cfg.model, cfg.optimizer, cfg.train
    desc = (
        f"chargpt run {cfg.name}: byte-level GPT, {m.n_layer} layers, d_model {m.d_model}, {m.n_head} heads, context "
        f"{m.context}; {o.name}, {cfg.schedule.name} schedule, {t.iterations} steps of batch {t.batch_size}"
        + (f" ({t.steps(None)} where it trains in fp32)" if t.fp32_iterations_fraction else "")
    )
    labels = [o.name, cfg.schedule.name, f"context-{m.context}", f"layers-{m.n_layer}"]
    return {"path": f"models/{cfg.name}/model.pt", "type": "model", "desc": desc, "labels": labels}


def render(dvc_yaml: str, params: dict, root: Path) -> tuple[str, str]:
    """(dvc.yaml, pipeline_runs.yaml) as they must be."""
    sources = run_sources(params)
    # every run valid, each key, base and grid value, before anything is read or written
    configs = {run: resolve_run(params, run, sources=sources) for run in sources}
    spec = yaml.safe_load(dvc_yaml)
    for stage in spec["stages"].values():
        body = stage.get("do", stage)
        data = [d for d in body.get("deps", []) if not (isinstance(d, str) and is_code(d))]
        body["deps"] = code_deps(stage_script(stage), root) + data
    spec["plots"] = plots_section(list(sources))
    spec["artifacts"] = {run: artifact(cfg) for run, cfg in configs.items()}
    runs = {
        "pipeline_runs": {
            name: {"own": s.own_key, "base": s.base_key, "root": s.root_key} for name, s in sources.items()
        }
    }
    return (
        HEADER + yaml.safe_dump(spec, sort_keys=False, width=120),
        RUNS_HEADER + yaml.safe_dump(runs, sort_keys=False, width=120),
    )


def staleness_report(dvc_yaml: str, params: dict) -> str:
    """Markdown: each code module, the stage instances that list it (a per-run stage counts once per run), so the
    stages a change to that module makes stale; most first."""
    spec = yaml.safe_load(dvc_yaml)
    n_runs = len(run_sources(params))
    listed: dict[str, int] = {}
    for stage in spec["stages"].values():
        instances = n_runs if "foreach" in stage else 1
        for dep in stage.get("do", stage).get("deps", []):
            if isinstance(dep, str) and is_code(dep) and dep.startswith("chargpt/"):
                listed[dep] = listed.get(dep, 0) + instances
    total = sum(n_runs if "foreach" in stage else 1 for stage in spec["stages"].values())
    lines = [f"| module | stages that go stale when it changes (of {total}) |", "|---|---|"]
    lines += [f"| {module} | {count} |" for module, count in sorted(listed.items(), key=lambda kv: (-kv[1], kv[0]))]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chargpt sync-dvc", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dvc-yaml", default="dvc.yaml")
    parser.add_argument("--check", action="store_true", help="exit 1 if anything is stale (changes nothing)")
    parser.add_argument(
        "--report",
        action="store_true",
        help="print each module with the number of stage instances that list it (changes nothing)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    path = Path(args.dvc_yaml)
    root = path.resolve().parent
    runs_path = path.parent / RUNS_FILE  # named as dvc.yaml is, relative or absolute
    if args.report:
        sys.stdout.write(staleness_report(path.read_text(), load_params(args.params)))
        return
    wanted = dict(zip((path, runs_path), render(path.read_text(), load_params(args.params), root)))
    stale = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
    if args.check:
        if stale:
            sys.exit(
                f"{', '.join(map(str, stale))}: stale (code deps, runs or plots differ from the code and "
                f"{args.params}); run `chargpt sync-dvc`"
            )
        return
    for p in stale:
        with atomic_open(p, "w") as f:
            f.write(wanted[p])
        print(f"{p}: rewritten")
