"""Many variants of one run, trained and scored in parallel worker processes: a recipe search, not a pipeline.

    python research/recipe_sweep.py --run quickstart_adamw --grid research/grids/quickstart_gpu.yaml --out sweep.jsonl
    python research/recipe_sweep.py --summarize sweep.jsonl [more.jsonl ...]   # a markdown table, best first
    python research/recipe_sweep.py --summarize sweep.jsonl --plot curves.png  # and the val probe curves
    python research/recipe_sweep.py --run quickstart --grid research/grids/modern_cpu_alone.yaml --equal-seconds 210 ...

The grid file is a list of {name, set: [section.key=value, ...]} variants of --run (params.yaml). Each
variant goes through the pipeline's own stage functions, those `dvc repro` runs (stages/lr_range.py where
schedule.lr_max is auto, stages/train.py, stages/evaluate.py), in a scratch directory that holds <data-dir>'s
splits. It scores the whole val and test splits static and in consecutive windows (SCORING below; a grid may
set eval.* otherwise). One JSON line per variant goes to --out as soon as it ends, with its val-probe curve, so
iterations to a target can be read from it. Nothing is tracked in MLflow or DVC: the recipes found here go into
params.yaml and are then run by `dvc exp run`, which is what docs/results.md reports.

--equal-seconds S compares variants at equal training time rather than equal steps: before any variant trains, each
one's step is timed here with nothing else of the sweep running (bench/throughput.py's measurement: the run's
TrainStep, optimizer and precision, after warm-up steps; the fastest of three rounds taken round robin over the
variants), and the variant trains for round(S / step time) iterations. Its record keeps the step time and the
iterations it was given, so a row is reproduced on any machine by its `set` plus train.iterations. Variants that
differ only in train.seed are timed once and given the same steps.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import torch
import yaml

from chargpt.device import describe
from chargpt.io import read_json
from chargpt.pipeline.config import load_run_config, with_overrides
from chargpt.pipeline.stage import DATA_DIR, model_path, report_dir
from chargpt.train.run import compile_mode
from chargpt.train.setup import select_device

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: the stage scripts under stages/


# A recipe search scores as the evaluate stage does, but static and in consecutive windows (the grid may say
# otherwise): the final run's stride-1 protocol costs 159x as much (docs/sweeps/stride1_cost_cpu.jsonl).
SCORING = ["eval.stride=null", "eval.dynamic=null", "eval.max_bytes=null"]


def run_variant(params: str, run: str, name: str, assignments: list[str], data_dir: str, threads: int) -> dict:
    """One variant through the pipeline's own stage functions (lr_range_test where lr_max is auto, train,
    evaluate), in a scratch directory of its own holding the splits, untracked and with no time limit."""
    import stages.evaluate
    import stages.lr_range
    import stages.train

    torch.set_num_threads(threads)
    os.environ.update({"CHARGPT_TRACKING": "off", "CHARGPT_MAX_HOURS": "0"})
    cfg = with_overrides(load_run_config(run, params), [*SCORING, *assignments])
    home = Path.cwd()
    with tempfile.TemporaryDirectory(prefix=f"sweep-{name}-") as scratch:
        (Path(scratch) / DATA_DIR).parent.mkdir(parents=True)
        (Path(scratch) / DATA_DIR).symlink_to(Path(data_dir).resolve(), target_is_directory=True)
        os.chdir(scratch)
        try:
            if cfg.schedule.lr_max == "auto":
                stages.lr_range.range_test(cfg)
            stages.train.train(cfg)
            stages.evaluate.evaluate(cfg)
            reports = report_dir(cfg.name)
            range_test = read_json(reports / "lr_range_test.json") if cfg.schedule.lr_max == "auto" else None
            metrics, scores = read_json(reports / "train_metrics.json"), read_json(reports / "eval.json")
            trained = torch.load(model_path(cfg.name), weights_only=True)
            curve = read_curve(reports / "train_curve.tsv")
        finally:
            os.chdir(home)
    device = select_device(cfg.train)
    mode = compile_mode(cfg.train, device)
    return {
        "name": name,
        "set": assignments,
        "iterations": metrics["iterations"],
        "tokens": metrics["tokens"],
        "lr_max": trained["lr_max"],
        "train_seconds": metrics["train_seconds"],
        **{k: scores[k] for k in ("val_bpc", "test_bpc", "val_accuracy", "test_accuracy")},
        # a tied head is the byte embedding: one storage, counted once
        "n_params": sum(t.numel() for t in {t.data_ptr(): t for t in trained["model"].values()}.values()),
        "execution": {
            "precision": scores["protocol"]["precision"],
            "compile": mode is not None,
            "cuda_graphs": mode == "reduce-overhead",
        },
        "device": describe(device),
        **({"range_test": {k: range_test[k] for k in RANGE_TEST_KEYS}} if range_test else {}),
        "curve": curve,
    }


RANGE_TEST_KEYS = ("suggested_lr", "lr_at_min_loss", "rule", "iterations_run")


def read_curve(path: Path) -> list[dict]:
    """The train stage's curve TSV as rows of numbers, each with only the columns its step logged."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [{k: int(v) if k == "step" else float(v) for k, v in row.items() if v != ""} for row in rows]


def summarize(paths: list[str], top: int | None = None, match: str | None = None) -> str:
    """Markdown: one row per variant (the last result of each name; names matching `match`), by test BPC."""
    results = {n: r for n, r in load_results(paths).items() if match is None or re.search(match, n)}
    rows = sorted(results.values(), key=lambda r: r.get("test_bpc", float("inf")))[:top]
    lines = ["| variant | iterations | tokens | val BPC | test BPC | device |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | | | | {r['error'][:80]} | |")
        else:
            lines.append(
                f"| {r['name']} | {r['iterations']} | {r['tokens']:,} | {r['val_bpc']:.3f} | {r['test_bpc']:.3f} "
                f"| {r['device']} |"
            )
    return "\n".join(lines) + "\n"


def against_table(paths: list[str], baseline: str, json_out: str | None = None) -> str:
    """Markdown: each variant against `baseline` (equal training time: the steps each was given and why), in the
    order they ran; with `json_out`, the same rows as JSON lines (the differences included) to that file."""
    results = load_results(paths)
    base = results[baseline]
    if json_out:
        with open(json_out, "w") as f:
            for r in results.values():
                if "error" not in r:
                    keys = ("name", "iterations", "measured_step_seconds", "train_seconds", "val_bpc", "test_bpc",
                            "val_accuracy", "test_accuracy")  # fmt: skip
                    row = {k: r.get(k) for k in keys} | {
                        f"{k}_vs_{baseline}": round(r[k] - base[k], 5) for k in ("val_bpc", "test_bpc")
                    }
                    f.write(json.dumps(row) + "\n")
            for row in seed_means(results, baseline):
                f.write(json.dumps(row) + "\n")
    lines = [
        f"| variant | steps | ms/step timed | train s | val BPC | val vs {baseline} | test BPC | test accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results.values():
        if "error" in r:
            lines.append(f"| {r['name']} | | | | | | {r['error'][:80]} | |")
            continue
        timed = f"{r['measured_step_seconds'] * 1e3:.1f}" if "measured_step_seconds" in r else ""
        lines.append(
            f"| {r['name']} | {r['iterations']} | {timed} | {r['train_seconds']:.0f} | {r['val_bpc']:.5f} "
            f"| {r['val_bpc'] - base['val_bpc']:+.5f} | {r['test_bpc']:.5f} | {r['test_accuracy']:.2%} |"
        )
    return "\n".join(lines) + "\n"


def seed_means(results: dict[str, dict], baseline: str) -> list[dict]:
    """For each variant X run with a second seed (X_seed2, beside baseline_seed2): the mean of its two seeds' val and
    test BPC, and the mean of its differences from the baseline of the same seed."""
    rows = []
    for name, second in results.items():
        first, base2 = results.get(name.removesuffix("_seed2")), results.get(f"{baseline}_seed2")
        if not name.endswith("_seed2") or first is None or base2 is None or "error" in first or "error" in second:
            continue
        pairs = ((first, results[baseline]), (second, base2))
        row = {"name": f"{first['name']} (2 seeds)"}
        for k in ("val_bpc", "test_bpc"):
            row[f"{k}_mean"] = round((first[k] + second[k]) / 2, 5)
            row[f"{k}_vs_{baseline}_mean"] = round(sum(r[k] - b[k] for r, b in pairs) / 2, 5)
        rows.append(row)
    return rows


def load_results(paths: list[str]) -> dict[str, dict]:
    results = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            result = json.loads(line)
            results[result["name"]] = result
    return results


def versus_control(paths: list[str]) -> str:
    """Markdown: per shape (variants named <shape>_1cycle_lr<x> / <shape>_cosine_lr<x>), the best 1cycle variant
    against the best cosine control, and the step at which 1cycle's val probe first reached the control's final
    val probe BPC."""
    best: dict[str, dict[str, dict]] = {}
    for name, r in load_results(paths).items():
        m = re.fullmatch(r"(.+?)_(1cycle|cosine)_lr[0-9.e-]+", name)
        if m and "error" not in r:
            kept = best.setdefault(m[1], {}).get(m[2])
            if kept is None or r["val_bpc"] < kept["val_bpc"]:
                best[m[1]][m[2]] = r
    lines = [
        "| shape | steps | 1cycle (best LR) val / test | cosine (best LR) val / test "
        "| 1cycle reaches cosine's final val probe at |",
        "|---|---|---|---|---|",
    ]
    for shape, pair in sorted(best.items(), key=lambda kv: kv[1].get("1cycle", {}).get("test_bpc", 9)):
        if {"1cycle", "cosine"} - set(pair):
            continue
        one, cos = pair["1cycle"], pair["cosine"]
        probe = lambda r: [(p["step"], p["val_probe_bpc"]) for p in r["curve"] if "val_probe_bpc" in p]  # noqa: E731
        target = probe(cos)[-1][1]
        hit = next((step for step, bpc in probe(one) if bpc <= target), None)
        lr = lambda r: r["name"].rsplit("_lr", 1)[1]  # noqa: E731
        reached = f"step {hit} ({hit / one['iterations']:.0%})" if hit else "never"
        lines.append(
            f"| {shape} | {one['iterations']} | {one['val_bpc']:.3f} / {one['test_bpc']:.3f} (lr {lr(one)}) "
            f"| {cos['val_bpc']:.3f} / {cos['test_bpc']:.3f} (lr {lr(cos)}) | {reached} (target {target:.3f}) |"
        )
    return "\n".join(lines) + "\n"


def plot_curves(paths: list[str], out: str, match: str | None = None, title: str = "val probe BPC by variant") -> None:
    """The val probe curve of every variant that finished (names matching `match`), one line each, as a PNG."""
    from chargpt.tracking.plots import plot_curves as draw

    results = [r for n, r in load_results(paths).items() if "error" not in r and (match is None or re.search(match, n))]
    curves = {
        r["name"]: [(p["step"], p["val_probe_bpc"]) for p in r["curve"] if "val_probe_bpc" in p]
        for r in sorted(results, key=lambda r: r["test_bpc"])
    }
    draw(curves, out, title, x_label="step", y_label="val probe BPC (bits per byte)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--run",
        default="quickstart_adamw",
        help="the run the grid varies (the grids in research/grids: "
        "quickstart_adamw, the AdamW recipe their step counts were sized for)",
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--grid", help="YAML list of {name, set: [section.key=value, ...]}")
    parser.add_argument("--set", action="append", default=[], help="section.key=value applied to every variant")
    parser.add_argument("--data-dir", default="data/processed")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: cores / workers)")
    parser.add_argument("--out")
    parser.add_argument(
        "--equal-seconds",
        type=float,
        metavar="S",
        help="give each variant the iterations its measured step time fits in S seconds of training",
    )
    parser.add_argument("--summarize", nargs="+", metavar="JSONL", help="print a table of these results and exit")
    parser.add_argument("--top", type=int, help="with --summarize: only the best N")
    parser.add_argument("--plot", metavar="PNG", help="with --summarize: also draw the val probe curves to PNG")
    parser.add_argument(
        "--match", help="only the variants whose name matches this regex (the --grid rows run, the rows shown)"
    )
    parser.add_argument(
        "--versus-control",
        action="store_true",
        help="with --summarize: per shape, the best 1cycle variant against the best cosine control",
    )
    parser.add_argument(
        "--against", metavar="NAME", help="with --summarize: every variant against this one, in the order they ran"
    )
    parser.add_argument("--json", metavar="JSONL", help="with --against: also write its rows to this file")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.summarize:
        print_summary(args)
        return
    if not (args.grid and args.out):
        sys.exit("--grid and --out are required (or --summarize)")
    grid = yaml.safe_load(Path(args.grid).read_text())
    if not isinstance(grid, list) or not all(
        isinstance(v, dict) and {"name", "set"} >= set(v) and "name" in v for v in grid
    ):
        sys.exit(f"{args.grid}: expected a list of {{name, set: [section.key=value, ...]}}")
    variants = [(v["name"], [*args.set, *(v.get("set") or [])]) for v in grid]
    if args.match:
        variants = [v for v in variants if re.search(args.match, v[0])]
        if not variants:
            sys.exit(f"--match {args.match!r}: no variant of {args.grid} matches")
    base = load_run_config(args.run, args.params)
    for _, assignments in variants:  # every variant valid before any work starts
        with_overrides(base, assignments)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    step_seconds = {}
    if args.equal_seconds:
        torch.set_num_threads(threads)  # each variant is timed as a worker will run it
        variants, step_seconds = at_equal_seconds(variants, base, args.equal_seconds)
    run_grid(args, variants, threads, step_seconds)


def print_summary(args: argparse.Namespace) -> None:
    if args.plot:
        plot_curves(args.summarize, args.plot, args.match)
    if args.against:
        sys.stdout.write(against_table(args.summarize, args.against, args.json))
        return
    sys.stdout.write(
        versus_control(args.summarize) if args.versus_control else summarize(args.summarize, args.top, args.match)
    )


def at_equal_seconds(variants: list, base, seconds: float) -> tuple[list, dict[str, float]]:
    """The variants, each given the iterations its step time here fits in `seconds`; and those step times."""
    # A seed changes no step's cost: variants that differ only in train.seed are timed once and get the same
    # steps, so that a second seed measures the noise, not the timing's.
    from bench.throughput import step_seconds_round_robin

    timed = {name: tuple(a for a in a_s if not a.startswith("train.seed=")) for name, a_s in variants}
    configs = {key: with_overrides(base, list(key)) for key in dict.fromkeys(timed.values())}
    by_config = step_seconds_round_robin(configs)
    step_seconds = {name: by_config[key] for name, key in timed.items()}
    given = []
    for name, assignments in variants:
        iterations = max(1, round(seconds / step_seconds[name]))
        given.append((name, [*assignments, f"train.iterations={iterations}"]))
        print(f"{name}: {step_seconds[name] * 1e3:.1f} ms/step -> {iterations} iterations", flush=True)
    return given, step_seconds


def run_grid(args: argparse.Namespace, variants: list, threads: int, step_seconds: dict[str, float]) -> None:
    """Each variant in a worker process; one JSON line each to args.out as it ends."""
    start = time.perf_counter()
    with open(args.out, "a") as out, ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        futures = {
            pool.submit(run_variant, args.params, args.run, name, a, args.data_dir, threads): name
            for name, a in variants
        }
        for future in as_completed(futures):
            try:
                result = future.result()
            except Exception as e:  # one diverged or broken variant must not lose the others
                result = {
                    "name": futures[future],
                    "error": f"{type(e).__name__}: {e}",
                    "traceback": "".join(traceback.format_exception(e))[-4000:],
                }
            if futures[future] in step_seconds:
                result["measured_step_seconds"] = step_seconds[futures[future]]
            out.write(json.dumps(result) + "\n")
            out.flush()
            summary = {
                k: result.get(k) for k in ("name", "iterations", "val_bpc", "test_bpc", "train_seconds", "error")
            }
            print(f"[{time.perf_counter() - start:6.0f}s] {json.dumps(summary)}", flush=True)


if __name__ == "__main__":
    main()
