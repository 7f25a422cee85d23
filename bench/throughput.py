"""Training and evaluation throughput of a run's config on this machine, as ratios measured in one process.

    python bench/throughput.py [--run quickstart] [--steps 10] [--modes eager,compile,reduce-overhead]
                               [--batch-sizes 32,64] [--set optimizer.name=adamw ...] [--versus quickstart_classic]

Prints: the peak GEMM throughput measured here (fp32, and bf16 or fp16), then one row per execution mode and
batch size: training tokens/s, the step time, and model FLOPs utilisation (6N + 12 L d T FLOPs per token, as
nanoGPT estimates it) against the measured peak of the run's precision; the same step in plain fp32 eager
and each mode's speed-up over it; evaluation tokens/s (eager, and in each compiled mode asked for); and preprocess
MB/s on a generated file. Modes: eager; compile (torch.compile); reduce-overhead (torch.compile replaying CUDA
graphs: train.cuda_graphs, CUDA only). --modes defaults to the mode the run resolves to on this device. The step is
the train stage's: TrainStep (clipping, the run's optimizer) under a constant LR, compile time excluded (printed
apart).

--versus RUN (repeatable): the run's training time against RUN's, each run's steps here (train.iterations, or
their fp32_iterations_fraction where precision auto resolves to fp32) x its step time, the steps
timed round robin in this process (eager, each run's own batch size and precision; the best of --rounds timings of
--steps steps each), so that the machine's drift touches both alike: a ratio that holds on a noisy machine where
two separate runs' seconds do not.
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
from chargpt.device import autocast, describe, precision_name, resolve_amp_dtype
from chargpt.evaluation.scoring import split_score
from chargpt.model.gpt import GPT
from chargpt.pipeline.config import load_run_config, with_overrides
from chargpt.train.loop import LoopConfig, TrainParts, TrainStep, train_loop
from chargpt.train.optimizers import build_optimizer
from chargpt.train.run import compile_mode
from chargpt.train.setup import select_device

# One static graph per batch size, as a training run compiles it (not one dynamic graph for all).
torch._dynamo.config.automatic_dynamic_shapes = False
MODES = {"eager": None, "compile": "default", "reduce-overhead": "reduce-overhead"}  # name: torch.compile's mode


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


def train_tokens_per_s(cfg, device, amp_dtype, steps: int, mode: str, batch_size: int) -> tuple[float, float]:
    """Training tokens/s of `mode` at `batch_size`, and the seconds its first 5 steps took (compiling, and recording
    the CUDA graphs)."""
    torch.manual_seed(0)
    model = GPT(cfg.model).to(device)
    opt = build_optimizer(model, cfg.optimizer, lr=1e-4, momentum=cfg.schedule.momentum_max)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    x = torch.randint(0, 256, (batch_size, cfg.model.context), device=device)
    forward = torch.compile(model, mode=MODES[mode]) if MODES[mode] else model
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    step = TrainStep(
        forward,
        model.parameters(),
        opt,
        grad_clip=cfg.optimizer.grad_clip,
        amp_context=lambda: autocast(device, amp_dtype),
        scaler=scaler,
    )
    parts = TrainParts(model, opt, sched, lambda: (x, x), step)
    loop = lambda n: train_loop(parts, LoopConfig(n, n, n, check_every_step=device.type == "cpu"))  # noqa: E731
    t = time.perf_counter()
    loop(5)  # warm-up: compilation, and reduce-overhead's recording of its graphs
    sync(device)
    warmup = time.perf_counter() - t
    t = time.perf_counter()
    loop(steps)
    sync(device)
    return steps * x.numel() / (time.perf_counter() - t), warmup


def step_seconds_round_robin(cfgs: dict[str, object], rounds: int = 3, steps: int = 10) -> dict[str, float]:
    """Each config's seconds per training step here: the fastest of `rounds` timings of `steps` steps, taken round
    robin over the configs, so that a drift of the machine's speed touches every config alike."""
    best = dict.fromkeys(cfgs, float("inf"))
    for _ in range(rounds):
        for name, cfg in cfgs.items():
            device = select_device(cfg.train)
            amp_dtype = resolve_amp_dtype(cfg.train.precision, device)
            tokens_per_s, _ = train_tokens_per_s(cfg, device, amp_dtype, steps, "eager", cfg.train.batch_size)
            best[name] = min(best[name], cfg.train.batch_size * cfg.model.context / tokens_per_s)
    return best


def measure(isolate: bool, fn, *args):
    if not isolate:
        return fn(*args)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def eval_tokens_per_s(cfg, device, amp_dtype, n_bytes: int, mode: str) -> float:
    model = GPT(cfg.model).to(device)
    model = torch.compile(model, mode=MODES[mode]) if MODES[mode] else model
    data = torch.randint(0, 256, (n_bytes,), dtype=torch.uint8)

    def run(d):
        return split_score(model, d, cfg.model.context, cfg.eval.batch_size, device=device, amp_dtype=amp_dtype)

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


def parse_args() -> argparse.Namespace:
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
    parser.add_argument(
        "--versus", action="append", default=[], metavar="RUN",
        help="time the run's training against RUN's, round robin in this process (repeatable)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5, help="--versus: timings per run, the best kept")
    parser.add_argument("--json", metavar="FILE", help="also append each figure to FILE as a JSON line")
    parser.add_argument(
        "--isolate", action="store_true", help="measure each mode in a process of its own (one failing spares the rest)"
    )
    args = parser.parse_args()
    if args.modes and (unknown := set(args.modes.split(",")) - set(MODES)):
        parser.error(f"--modes: unknown {sorted(unknown)}; known: {list(MODES)}")
    return args


class Bench:
    """One run's config on this device, and where its figures go (stdout, and --json's lines)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.cfg = with_overrides(load_run_config(args.run, args.params), args.set)
        self.device = select_device(self.cfg.train)
        self.amp_dtype = resolve_amp_dtype(self.cfg.train.precision, self.device)
        cuda = self.device.type == "cuda"
        self.name = describe(self.device) + ("" if cuda else f", {torch.get_num_threads()} threads")
        default_mode = {v: k for k, v in MODES.items()}[compile_mode(self.cfg.train, self.device)]
        self.modes = args.modes.split(",") if args.modes else [default_mode]
        if not cuda and "reduce-overhead" in self.modes:
            raise SystemExit("--modes: reduce-overhead records CUDA graphs, and this run is not on a CUDA device")
        self.batch_sizes = (
            [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else [self.cfg.train.batch_size]
        )

    def record(self, **figure) -> None:
        if self.args.json:
            line = {"run": self.args.run, "set": self.args.set, "device": self.name, "torch": torch.__version__}
            with open(self.args.json, "a") as f:
                f.write(json.dumps(line | figure) + "\n")

    def peak(self) -> float:
        """Prints and records the peak GEMM throughput of fp32 and the low precision; returns the run's."""
        n = self.args.gemm_size or (8192 if self.device.type == "cuda" else 1024)
        low = self.amp_dtype or torch.bfloat16
        peaks = {dt: peak_gemm_tflops(self.device, dt, n) for dt in (torch.float32, low)}
        print(
            f"device: {self.name}; torch {torch.__version__}; run {self.args.run!r} {self.args.set or ''}; precision "
            f"{precision_name(self.amp_dtype)}; optimizer {self.cfg.optimizer.name}; context {self.cfg.model.context}"
        )
        print(
            f"peak GEMM ({n}^2, best of 5): fp32 {peaks[torch.float32]:.3f} TFLOP/s, {precision_name(low)} "
            f"{peaks[low]:.3f} TFLOP/s"
        )
        self.record(
            kind="peak", fp32_tflops=peaks[torch.float32], low_precision=precision_name(low), low_tflops=peaks[low]
        )
        return peaks[self.amp_dtype or torch.float32]

    def train(self, peak: float) -> None:
        cfg, args = self.cfg, self.args
        fpt = flops_per_token(GPT(cfg.model))
        baseline = {}
        if not args.no_fp32_baseline:
            baseline = {
                b: train_tokens_per_s(cfg, self.device, None, args.steps, "eager", b)[0] for b in self.batch_sizes
            }
        for b, mode in ((b, mode) for b in self.batch_sizes for mode in self.modes):
            about = {"kind": "train", "mode": mode, "batch_size": b, "optimizer": cfg.optimizer.name}
            try:
                tps, warmup = measure(
                    args.isolate, train_tokens_per_s, cfg, self.device, self.amp_dtype, args.steps, mode, b
                )
            except Exception as e:  # one mode failing (e.g. a graph that fails to record) must not lose the others'
                traceback.print_exc()
                self.record(**about, error=f"{type(e).__name__}: {e}")
                print(f"train {mode} batch {b}x{cfg.model.context}: FAILED {type(e).__name__}: {e}", flush=True)
                continue
            ms, mfu = b * cfg.model.context / tps * 1e3, fpt * tps / 1e12 / peak
            self.record(
                **about,
                context=cfg.model.context,
                precision=precision_name(self.amp_dtype),
                tokens_per_s=tps,
                ms_per_step=ms,
                mfu=mfu,
                warmup_seconds=warmup,
                fp32_eager_tokens_per_s=baseline.get(b),
            )
            versus = f"; {tps / baseline[b]:.2f}x plain fp32 eager ({baseline[b]:,.0f})" if baseline else ""
            print(
                f"train {mode} batch {b}x{cfg.model.context}: {tps:,.0f} tokens/s, {ms:.2f} ms/step, "
                f"{fpt * tps / 1e12:.3f} TFLOP/s, MFU {mfu:.1%} of the measured {precision_name(self.amp_dtype)} "
                f"peak{versus}; first 5 steps (compiling) {warmup:.1f} s",
                flush=True,
            )

    def versus(self) -> None:
        """The run's training seconds against each --versus run's: iterations x step, the steps timed round robin."""
        args = self.args
        cfgs = {args.run: self.cfg} | {run: load_run_config(run, args.params) for run in args.versus}
        step = step_seconds_round_robin(cfgs, args.rounds, args.steps)
        # the steps each trains here: fewer in fp32 where train.fp32_iterations_fraction applies
        iterations = {
            run: cfg.train.steps(resolve_amp_dtype(cfg.train.precision, select_device(cfg.train)))
            for run, cfg in cfgs.items()
        }
        mine = iterations[args.run] * step[args.run]
        for run in args.versus:
            theirs = iterations[run] * step[run]
            self.record(
                kind="versus", versus=run, step_seconds=step[args.run], versus_step_seconds=step[run],
                iterations=iterations[args.run], versus_iterations=iterations[run],
                training_ratio=mine / theirs, rounds=args.rounds, steps=args.steps,
            )  # fmt: skip
            print(
                f"versus {run}: step {step[args.run] * 1e3:.1f} ms against {step[run] * 1e3:.1f} ms (best of "
                f"{args.rounds} round robin); training {iterations[args.run]} x {step[args.run] * 1e3:.1f} ms = "
                f"{mine:.0f} s against {iterations[run]} x {step[run] * 1e3:.1f} ms = {theirs:.0f} s: "
                f"{mine / theirs:.2f}x",
                flush=True,
            )

    def evaluate(self) -> None:
        for mode in dict.fromkeys(["eager", *self.modes]):
            about = {"kind": "eval", "mode": mode, "batch_size": self.cfg.eval.batch_size}
            try:
                tps = eval_tokens_per_s(self.cfg, self.device, self.amp_dtype, self.args.eval_bytes, mode)
            except Exception as e:
                traceback.print_exc()
                self.record(**about, error=f"{type(e).__name__}: {e}")
                continue
            self.record(**about, tokens_per_s=tps)
            print(f"eval {mode} batch {self.cfg.eval.batch_size}: {tps:,.0f} tokens/s", flush=True)


def main() -> None:
    args = parse_args()
    bench = Bench(args)
    bench.train(bench.peak())
    if args.versus:
        bench.versus()
    if args.eval_bytes:
        bench.evaluate()
    if args.preprocess_mb:
        speeds = sorted(preprocess_mb_per_s(args.preprocess_mb * 1_000_000))
        print(
            f"preprocess: {speeds[len(speeds) // 2]:,.0f} MB/s (median of {len(speeds)}; best {speeds[-1]:,.0f}) "
            f"on a generated {args.preprocess_mb} MB file"
        )


if __name__ == "__main__":
    main()
