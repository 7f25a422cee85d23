import subprocess
import sys

import yaml

from conftest import REPO, TINY_RUN


def test_throughput_benchmark_prints_its_figures(tmp_path, params):
    params["runs"] = {"tiny": TINY_RUN}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, str(REPO / "bench/throughput.py"), "--params", str(tmp_path / "params.yaml"),
                           "--run", "tiny", "--steps", "2", "--eval-bytes", "5000", "--preprocess-mb", "2", "--gemm-size", "256"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    for start in ("device:", "peak GEMM", "train (configured):", "train (plain fp32 eager):", "eval:", "preprocess:"):
        assert any(line.startswith(start) for line in lines), (start, proc.stdout)
