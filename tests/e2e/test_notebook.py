"""notebooks/colab.ipynb, run as a script on the CPU: its one flag (ON_COLAB, false outside Colab) skips the cells
only Colab can run (clone, Drive, the port proxy) and trains a tiny stand-in on the shipped sample instead, with a
folder standing in for Google Drive."""

import json
import re
import shutil
import subprocess
import sys

from conftest import REPO, SAMPLE, TINY_RUN, make_project, run

NOTEBOOK = REPO / "notebooks" / "colab.ipynb"


def code_cells() -> list[str]:
    return ["".join(c["source"]) for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]


def test_only_guarded_cells_use_colab():
    for cell in code_cells():
        for line in cell.splitlines():
            if "google.colab" in line and "sys.modules" not in line:
                assert re.search(r"^\s+", line), f"unguarded Colab line: {line!r}"
        if "google.colab import" in cell:
            assert cell.lstrip().startswith("if ON_COLAB"), cell[:80]
    text = NOTEBOOK.read_text()
    assert "fp16" in text and "GradScaler" in text and "requirements/runtime.lock" in text and "--no-deps" in text


def test_the_notebook_runs_on_the_cpu_with_its_colab_cells_skipped(tmp_path):
    root, env = make_project(tmp_path / "project", {"quickstart": TINY_RUN})
    shutil.copytree(SAMPLE.parent, root / "samples")
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "the sample"], root, env)
    (root / "notebook.py").write_text("\n\n".join(code_cells()))
    drive = tmp_path / "drive"
    env |= {"CHARGPT_NOTEBOOK_DRIVE": str(drive)}
    proc = subprocess.run([sys.executable, "notebook.py"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    evaluated = json.loads((root / "reports/notebook_tiny/eval.json").read_text())
    assert evaluated["iterations"] == 30 and 0 < evaluated["test_prefix_bpc"] < 8
    # what must outlive a disconnect is on "Drive": the cache, the pushed remote, the MLflow store, the state folder
    assert (root / "checkpoints").resolve() == (drive / "checkpoints").resolve()
    assert any((drive / "dvc-cache").rglob("*")) and any((drive / "dvc-remote").rglob("*"))
    assert (drive / "mlflow.db").stat().st_size > 0
    assert re.search(r"notebook_tiny\s", proc.stdout), proc.stdout[-2000:]  # chargpt compare's row, inline
    assert "reports/notebook_tiny/train_curve.png" in proc.stdout
