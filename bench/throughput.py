"""Training and evaluation throughput of a run's config on this machine, as ratios measured in one process.

    python bench/throughput.py [--run quickstart] [--steps 10] [--modes eager,compile,graphs,compile+graphs]
                               [--batch-sizes 32,64] [--set optimizer.name=adamw ...]

Prints: the peak GEMM throughput measured here (fp32, and bf16 or fp16), then one row per execution mode and
batch size: training tokens/s, the step time, and model FLOPs utilisation (6N + 12 L d T FLOPs per token, as
nanoGPT estimates it) against the measured peak of the run's precision; the same step in plain fp32 eager
and each mode's speed-up over it; evaluation tokens/s (eager, and replayed from a CUDA graph on CUDA); and
preprocess MB/s on a generated file. Modes: eager; compile (torch.compile); graphs (the whole step in a CUDA
graph, chargpt/train/cuda_graphs.py); compile+graphs. The graph modes need CUDA. --modes defaults to the mode the
run resolves to on this device. The step is the train stage's: TrainStep (clipping, the run's optimizer)
under a constant LR.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from chargpt.data.corpus import split_corpus
from chargpt.device import autocast as device_autocast
from chargpt.device import device_name, precision_name
from chargpt.evaluation.scoring import split_score
from chargpt.model.gpt import GPT
from chargpt.pipeline.config import load_run_config, with_overrides
from chargpt.train.cuda_graphs import GraphedStep, capturable_optimizer
from chargpt.train.loop import LoopConfig, TrainParts, TrainStep, train_loop
from chargpt.train.optimizers import build_optimizer
from chargpt.train.run import Execution
from chargpt.train.setup import autocast_dtype, select_device

# One static graph per batch size, as a training run compiles it (not one dynamic graph for all).
torch._dynamo.config.automatic_dynamic_shapes = False
MODES = {"eager": (False, False), "compile": (True, False), "graphs": (False, True), "compile+graphs": (True, True)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gemm_tflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e12


def flops_per_token(model: GPT) -> float:
    cfg = model.cfg
    n = model.num_params() - model.num_position_params()  # nanoGPT leaves positions out
    return 6 * n + 12 * cfg.n_layer * cfg.d_model * cfg.context


def train_tokens_per_s(cfg, device, autocast, steps: int, mode: str, batch_size: int) -> float:
    compile_model, graphs = MODES[mode]
    torch.manual_seed(0)
    model = GPT(cfg.model).to(device)
    build = capturable_optimizer if graphs else build_optimizer
    opt = build(model, cfg.optimizer, lr=1e-4, momentum=cfg.schedule.momentum_max)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    x = torch.randint(0, 256, (batch_size, cfg.model.context), device=device)
    forward = torch.compile(model) if compile_model else model
    scaler = torch.amp.GradScaler(device.type) if autocast == torch.float16 else None
    step = TrainStep(
        forward,
        model.parameters(),
        opt,
        grad_clip=cfg.optimizer.grad_clip,
        autocast=lambda: device_autocast(device, autocast),
        scaler=scaler,
    )
    if graphs:
        step = GraphedStep(step, opt, device)
    parts = TrainParts(model, opt, sched, lambda: (x, x), step)
    loop = lambda n: train_loop(parts, LoopConfig(n, n, n, check_every_step=device.type == "cpu"))  # noqa: E731
    loop(5)  # warm-up: compilation, and the graph's warm-up steps and capture
    sync(device)
    t = time.perf_counter()
    loop(steps)
    sync(device)
    return steps * x.numel() / (time.perf_counter() - t)


def measure(isolate: bool, fn, *args):
    if not isolate:
        return fn(*args)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def eval_tokens_per_s(cfg, device, autocast, n_bytes: int, compile_model: bool, graphs: bool) -> float:
    model = GPT(cfg.model).to(device)
    model = torch.compile(model) if compile_model else model
    data = torch.randint(0, 256, (n_bytes,), dtype=torch.uint8)

    def run(d):
        return split_score(
            model, d, cfg.model.context, cfg.eval.batch_size, device=device, autocast_dtype=autocast, cuda_graphs=graphs
        )

    run(data[: cfg.model.context * cfg.eval.batch_size * 2 + 1])  # warm-up
    t = time.perf_counter()
    scored = run(data).bytes_scored
    return scored / (time.perf_counter() - t)


def preprocess_mb_per_s(size: int = 100_000_000, repeats: int = 3) -> list[float]:
    """MB/s of the preprocess split, each of `repeats` runs (they vary with the page cache's writeback)."""
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.bin"
        corpus.write_bytes(torch.randint(0, 256, (size,), dtype=torch.uint8).numpy().tobytes())
        speeds = []
        for _ in range(repeats):
            t = time.perf_counter()
            split_corpus(corpus, Path(tmp) / "out", (0.9, 0.05, 0.05))
            speeds.append(size / (time.perf_counter() - t) / 1e6)
        return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="quickstart")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--modes", help=f"comma-separated, of {list(MODES)} (default: the run's resolved mode)")
    parser.add_argument("--batch-sizes", help="comma-separated (default: the run's train.batch_size)")
    parser.add_argument("--no-fp32-baseline", action="store_true", help="skip the plain fp32 eager reference")
    parser.add_argument("--eval-bytes", type=int, default=200_000, help="0: skip the evaluation figure")
    parser.add_argument("--preprocess-mb", type=int, default=100, help="0: skip the preprocess figure")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override the run's config, e.g. optimizer.name=adamw (repeatable)",
    )
    parser.add_argument(
        "--gemm-size", type=int, help="square GEMM size for the peak (default 8192 on CUDA, 1024 on CPU)"
    )
    parser.add_argument("--json", metavar="FILE", help="also append each figure to FILE as a JSON line")
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="measure each mode in a process of its own (a failed CUDA graph capture leaves the "
        "process's RNG in capture mode, failing every later measurement)",
    )
    args = parser.parse_args()

    def record(**figure) -> None:
        if args.json:
            with open(args.json, "a") as f:
                f.write(
                    json.dumps({"run": args.run, "set": args.set, "device": name, "torch": torch.__version__, **figure})
                    + "\n"
                )

    cfg = with_overrides(load_run_config(args.run, args.params), args.set)
    device = select_device(cfg.train)
    autocast = autocast_dtype(cfg.train, device)
    resolved = Execution.resolve(cfg.train, device, autocast, world_size=1)
    default_mode = {v: k for k, v in MODES.items()}[(resolved.compile, resolved.cuda_graphs)]
    modes = args.modes.split(",") if args.modes else [default_mode]
    if unknown := set(modes) - set(MODES):
        parser.error(f"--modes: unknown {sorted(unknown)}; known: {list(MODES)}")
    if device.type != "cuda" and any(MODES[m][1] for m in modes):
        parser.error("--modes: the graph modes need a CUDA device")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else [cfg.train.batch_size]

    n = args.gemm_size or (8192 if device.type == "cuda" else 1024)
    low = autocast or torch.bfloat16
    peaks = {dt: peak_gemm_tflops(device, dt, n) for dt in (torch.float32, low)}
    name = device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(
        f"device: {name}; torch {torch.__version__}; run {args.run!r} {args.set or ''}; precision "
        f"{precision_name(autocast)}; optimizer {cfg.optimizer.name}; context {cfg.model.context}"
    )
    print(
        f"peak GEMM ({n}^2, best of 5): fp32 {peaks[torch.float32]:.3f} TFLOP/s, {precision_name(low)} "
        f"{peaks[low]:.3f} TFLOP/s"
    )
    record(kind="peak", fp32_tflops=peaks[torch.float32], low_precision=precision_name(low), low_tflops=peaks[low])

    fpt = flops_per_token(GPT(cfg.model))
    peak = peaks[autocast or torch.float32]
    baseline = (
        {}
        if args.no_fp32_baseline
        else {b: train_tokens_per_s(cfg, device, None, args.steps, "eager", b) for b in batch_sizes}
    )
    for b in batch_sizes:
        for mode in modes:
            try:
                tps = measure(args.isolate, train_tokens_per_s, cfg, device, autocast, args.steps, mode, b)
            except Exception as e:  # one mode failing (e.g. a capture error) must not lose the others' figures
                traceback.print_exc()
                record(
                    kind="train",
                    mode=mode,
                    batch_size=b,
                    optimizer=cfg.optimizer.name,
                    error=f"{type(e).__name__}: {e}",
                )
                print(f"train {mode} batch {b}x{cfg.model.context}: FAILED {type(e).__name__}: {e}", flush=True)
                continue
            versus = f"; {tps / baseline[b]:.2f}x plain fp32 eager ({baseline[b]:,.0f})" if baseline else ""
            record(
                kind="train",
                mode=mode,
                batch_size=b,
                context=cfg.model.context,
                optimizer=cfg.optimizer.name,
                precision=precision_name(autocast),
                tokens_per_s=tps,
                ms_per_step=b * cfg.model.context / tps * 1e3,
                mfu=fpt * tps / 1e12 / peak,
                fp32_eager_tokens_per_s=baseline.get(b),
            )
            print(
                f"train {mode} batch {b}x{cfg.model.context}: {tps:,.0f} tokens/s, "
                f"{b * cfg.model.context / tps * 1e3:.2f} ms/step, {fpt * tps / 1e12:.3f} TFLOP/s, "
                f"MFU {fpt * tps / 1e12 / peak:.1%} of the measured {precision_name(autocast)} peak{versus}",
                flush=True,
            )
    if args.eval_bytes:  # eager against a CUDA graph's replay (compile would only add its minutes here)
        compile_model = False
        for graphs in [False, True] if device.type == "cuda" else [False]:
            try:
                tps = eval_tokens_per_s(cfg, device, autocast, args.eval_bytes, compile_model, graphs)
            except Exception as e:
                traceback.print_exc()
                record(kind="eval", compile=compile_model, cuda_graphs=graphs, error=f"{type(e).__name__}: {e}")
                continue
            record(
                kind="eval", compile=compile_model, cuda_graphs=graphs, batch_size=cfg.eval.batch_size, tokens_per_s=tps
            )
            print(
                f"eval {'compile' if compile_model else 'eager'}{'+graphs' if graphs else ''} batch "
                f"{cfg.eval.batch_size}: {tps:,.0f} tokens/s",
                flush=True,
            )
    if args.preprocess_mb:
        speeds = sorted(preprocess_mb_per_s(args.preprocess_mb * 1_000_000))
        print(
            f"preprocess: {speeds[len(speeds) // 2]:,.0f} MB/s (median of {len(speeds)}; best {speeds[-1]:,.0f}) "
            f"on a generated {args.preprocess_mb} MB file"
        )


if __name__ == "__main__":
    main()
