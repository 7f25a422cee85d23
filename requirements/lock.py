"""Regenerate the locks: every dependency of chargpt at one version, with the hashes of its files, for CPython 3.11
on Linux x86_64 (uv's resolver). torch and its CUDA stack are left out on purpose: the build a machine needs differs
(the CPU wheel here, the CUDA build on a GPU machine, Colab's own), and pyproject.toml pins torch itself.

    python requirements/lock.py        # writes requirements/runtime.lock and requirements/dev.lock

The README's commands install a lock, then chargpt itself (`pip install -e .`), which adds torch==2.13.0 where it is
not installed yet. tests/unit/test_lock.py checks that the locks name every dependency of pyproject.toml.
"""

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# torch's own stack: the build of torch a machine installs brings the matching ones (or none, for the CPU wheel)
TORCH_STACK = re.compile(r"^(torch|triton|nvidia-(?!ml-py)[\w-]+|cuda-[\w-]+)==")  # nvidia-ml-py: ours


def compile_lock(extras: list[str], out: Path) -> None:
    """uv keeps the versions the lock already holds (its output file is its preference) and resolves only what
    pyproject.toml added or changed: a new dependency does not upgrade the others."""
    with tempfile.TemporaryDirectory() as tmp:
        previous = Path(tmp) / out.name
        if out.exists():
            shutil.copy(out, previous)
        cmd = [sys.executable, "-m", "uv", "pip", "compile", str(ROOT / "pyproject.toml"), "--python-version", "3.11",
               "--python-platform", "x86_64-unknown-linux-gnu", "--generate-hashes", "--no-header", "--quiet",
               "--output-file", str(previous)]  # fmt: skip
        for extra in extras:
            cmd += ["--extra", extra]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        text = previous.read_text()
    kept, skipping = [], False
    for line in text.splitlines():
        if line and not line[0].isspace():  # a package's first line: name==version \
            skipping = bool(TORCH_STACK.match(line))
        if not skipping:
            kept.append(line)
    header = (f"# Written by `python requirements/lock.py` (uv pip compile, CPython 3.11, Linux x86_64, with hashes)\n"
              f"# from pyproject.toml{' with extras ' + ', '.join(extras) if extras else ''}; torch and its CUDA stack "
              f"are left out (requirements/lock.py says why).\n")  # fmt: skip
    out.write_text(header + "\n".join(kept) + "\n")
    print(f"{out.relative_to(ROOT)}: {sum(1 for line in kept if '==' in line and not line[0].isspace())} packages")


if __name__ == "__main__":
    compile_lock([], ROOT / "requirements" / "runtime.lock")
    compile_lock(["dev"], ROOT / "requirements" / "dev.lock")
