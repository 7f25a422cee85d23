"""Throughput of a run's config on this machine, as ratios measured in one process.

    python bench/throughput.py [--run quickstart] [--steps 10] [--set train.compile=true ...]

Prints: the peak GEMM throughput measured here (fp32, bf16), training tokens/s and model FLOPs utilisation
(6N + 12 L d T FLOPs per token, as nanoGPT estimates it) against that peak, the same training step in plain
fp32 eager and the speed-up of the configured path over it, evaluation tokens/s, and preprocess MB/s on a
generated 100 MB file.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from chargpt.config import load_run_config, with_overrides
from chargpt.data import split_corpus
from chargpt.evaluation import split_bpc
from chargpt.model import GPT
from chargpt.runtime import autocast_dtype, select_device
from chargpt.schedule import build_optimizer
from chargpt.trainer import LoopConfig, train_loop


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
    n = model.num_params() - sum(b.pos_emb.weight.numel() for b in model.blocks)  # nanoGPT leaves positions out
    return 6 * n + 12 * cfg.n_layer * cfg.d_model * cfg.context


def train_tokens_per_s(cfg, device, autocast, steps: int, compile_model: bool) -> float:
    torch.manual_seed(0)
    model = GPT(cfg.model).to(device)
    opt = build_optimizer(model, cfg.optimizer, lr=1e-4, momentum=cfg.schedule.momentum_max)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    x = torch.randint(0, 256, (cfg.train.batch_size, cfg.model.context), device=device)
    batch = lambda: (x, x)  # noqa: E731
    forward = torch.compile(model) if compile_model else model
    loop_cfg = lambda n: LoopConfig(n, n, n, 0, cfg.optimizer.grad_clip, autocast,  # noqa: E731
                                    check_every_step=device.type == "cpu")
    loop = lambda n: train_loop(forward, opt, sched, batch, loop_cfg(n), dict, lambda *_: None)  # noqa: E731
    loop(3)  # warm-up (and compilation)
    sync(device)
    t = time.perf_counter()
    loop(steps)
    sync(device)
    return steps * x.numel() / (time.perf_counter() - t)


def eval_tokens_per_s(cfg, device, autocast, n_bytes: int) -> float:
    model = GPT(cfg.model).to(device)
    model = torch.compile(model) if cfg.train.compile else model
    data = torch.randint(0, 256, (n_bytes,), dtype=torch.uint8)
    split_bpc(model, data[: cfg.model.context * 4 + 1], cfg.model.context, cfg.eval.batch_size, device=device,
              autocast_dtype=autocast)  # warm-up
    t = time.perf_counter()
    _, scored = split_bpc(model, data, cfg.model.context, cfg.eval.batch_size, device=device, autocast_dtype=autocast)
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
    parser.add_argument("--eval-bytes", type=int, default=200_000)
    parser.add_argument("--preprocess-mb", type=int, default=100)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override the run's config, e.g. train.compile=true (repeatable)")
    parser.add_argument("--gemm-size", type=int, help="square GEMM size for the peak (default 8192 on CUDA, 1024 on CPU)")
    args = parser.parse_args()

    cfg = with_overrides(load_run_config(args.run, args.params), args.set)
    device = select_device(cfg.train)
    autocast = autocast_dtype(cfg.train, device)
    n = args.gemm_size or (8192 if device.type == "cuda" else 1024)
    peaks = {dt: peak_gemm_tflops(device, dt, n) for dt in (torch.float32, torch.bfloat16)}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    mode = "torch.compile" if cfg.train.compile else "eager"
    print(f"device: {name}; torch {torch.__version__}; run {args.run!r} {args.set or ''}; "
          f"precision {autocast or 'fp32'}, {mode}; batch {cfg.train.batch_size} x {cfg.model.context}")
    print(f"peak GEMM ({n}^2, best of 5): fp32 {peaks[torch.float32]:.3f} TFLOP/s, bf16 {peaks[torch.bfloat16]:.3f} TFLOP/s")

    fpt = flops_per_token(GPT(cfg.model))
    configured = train_tokens_per_s(cfg, device, autocast, args.steps, cfg.train.compile)
    plain = autocast is None and not cfg.train.compile
    eager_fp32 = configured if plain else train_tokens_per_s(cfg, device, None, args.steps, False)
    peak = peaks[autocast or torch.float32]
    print(f"train (configured): {configured:,.0f} tokens/s, {fpt * configured / 1e12:.3f} TFLOP/s, "
          f"MFU {fpt * configured / 1e12 / peak:.1%} of the measured {autocast or 'fp32'} peak")
    print(f"train (plain fp32 eager): {eager_fp32:,.0f} tokens/s; configured / fp32 eager = {configured / eager_fp32:.2f}x")
    evaluation = eval_tokens_per_s(cfg, device, autocast, args.eval_bytes)
    print(f"eval: {evaluation:,.0f} tokens/s = {evaluation / configured:.2f}x the training tokens/s")
    speeds = sorted(preprocess_mb_per_s(args.preprocess_mb * 1_000_000))
    print(f"preprocess: {speeds[len(speeds) // 2]:,.0f} MB/s (median of {len(speeds)}; best {speeds[-1]:,.0f}) on a "
          f"generated {args.preprocess_mb} MB file")


if __name__ == "__main__":
    main()
