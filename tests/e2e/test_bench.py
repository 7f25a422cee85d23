import json
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import REPO, TINY_RUN, params_with_runs

from chargpt.device import resolve_amp_dtype


def test_throughput_benchmark_measures_the_steps_figures_as_it_defines_them(tmp_path):
    """The train row's step time, FLOPs and MFU follow from its tokens/s and the measured peak as the script's doc
    defines them (6N + 12 L d T FLOPs per token, N without the positions), the speed-up over fp32 eager is the
    ratio of the two measured rates, and --versus's training ratio is that of each run's iterations x step."""
    # precision auto: 45 steps where bf16 is native, else their fp32 share, 22
    longer_train = {"iterations": 45, "batch_size": 8, "precision": "auto", "fp32_iterations_fraction": 0.5}
    longer = TINY_RUN | {"train": TINY_RUN["train"] | longer_train}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_with_runs({"tiny": TINY_RUN, "longer": longer})))
    figures = tmp_path / "figures.jsonl"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench/throughput.py"), "--params", str(tmp_path / "params.yaml"), "--run", "tiny",
         "--steps", "2", "--eval-bytes", "5000", "--preprocess-mb", "2", "--gemm-size", "256", "--json", str(figures),
         "--versus", "longer", "--rounds", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {row["kind"]: row for row in map(json.loads, figures.read_text().splitlines())}
    peak, train, evaluation = rows["peak"], rows["train"], rows["eval"]
    L, d, d_ff, T = 2, 32, 64, 32  # TINY_RUN's model: per-layer positions, biases, an untied head
    # two LayerNorms, attention's qkv and projection, the feed-forward's two layers
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * d_ff + d_ff) + (d_ff * d + d)
    n = 256 * d + L * block + 2 * d + 256 * d  # byte embedding, blocks, final LayerNorm, head
    flops_per_token = 6 * n + 12 * L * d * T
    tps = train["tokens_per_s"]
    assert train["ms_per_step"] == pytest.approx(4 * T / tps * 1e3)
    precision_peak = peak["fp32_tflops"] if train["precision"] == "fp32" else peak["low_tflops"]
    assert train["mfu"] == pytest.approx(flops_per_token * tps / 1e12 / precision_peak)
    assert 0 < train["mfu"] < 1 and evaluation["tokens_per_s"] > 0
    ratio = tps / train["fp32_eager_tokens_per_s"]
    assert f"{ratio:.2f}x plain fp32 eager" in proc.stdout
    assert any(line.startswith("preprocess: ") and "MB/s" in line for line in proc.stdout.splitlines())
    # --versus: each run's iterations x its step, the steps timed in this process, round robin
    versus = rows["versus"]
    steps = 45 if resolve_amp_dtype("auto", torch.device("cpu")) else 22
    assert (versus["versus"], versus["iterations"], versus["versus_iterations"]) == ("longer", 30, steps)
    ratio = 30 * versus["step_seconds"] / (steps * versus["versus_step_seconds"])
    assert versus["training_ratio"] == pytest.approx(ratio)
    assert f"= {30 * versus['step_seconds']:.0f} s" in proc.stdout and f": {ratio:.2f}x" in proc.stdout
