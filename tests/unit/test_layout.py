"""The layout holds: the import contract of pyproject.toml (layers, and no reporting in results code), ruff's lint
and format, and a dvc.yaml whose stages list results code only."""

import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO

BIN = Path(sys.executable).parent


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    command = [str(BIN / "lint-imports"), "--config", str(root / "pyproject.toml")]
    env = {"PYTHONPATH": str(root), "PATH": str(BIN)}
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_import_contract_is_kept_and_catches_a_reporting_import_in_results_code(tmp_path):
    kept = lint_imports(REPO)
    assert kept.returncode == 0 and "2 kept, 0 broken" in kept.stdout, kept.stdout[-2000:]
    shutil.copytree(REPO / "chargpt", tmp_path / "chargpt", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    loop = tmp_path / "chargpt/train/loop.py"
    loop.write_text(loop.read_text() + "\nimport chargpt.tracking.record  # a results module that reports\n")
    broken = lint_imports(tmp_path)
    assert broken.returncode != 0 and "chargpt.train.loop -> chargpt.tracking.record" in broken.stdout, broken.stdout


def test_ruff_lint_and_format_are_clean():
    for args in (["check", "."], ["format", "--check", "."]):
        proc = subprocess.run([str(BIN / "ruff"), *args], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"ruff {' '.join(args)}:\n{proc.stdout[-3000:]}"


def test_no_stage_lists_reporting_code_and_the_data_stages_list_data_code_only():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        deps = [d for d in stage.get("do", stage)["deps"] if d.endswith(".py")]
        assert not [d for d in deps if d.startswith("chargpt/tracking/")], name
    core = {"chargpt/__init__.py", "chargpt/errors.py", "chargpt/io.py", "chargpt/settings.py"}
    harness = {"chargpt/pipeline/__init__.py", "chargpt/pipeline/harness.py"}  # logging, the one-line error end
    for name in ("download", "preprocess"):
        code = {d for d in stages[name]["deps"] if d.startswith("chargpt/")}
        assert code - core - harness == {"chargpt/data/__init__.py", "chargpt/data/config.py",
                                         "chargpt/data/corpus.py"}, name  # fmt: skip


def test_a_stage_process_loads_no_mlflow_sqlalchemy_or_pandas_until_it_records():
    """The tracking modules import MLflow, SQLAlchemy and pandas lazily (chargpt.tracking.lazy_import), so a stage run
    with tracking off (CHARGPT_TRACKING=off: the tests, the recipe sweeps) never pays for them; a store opened
    loads them. The first optimizer built, as every training stage builds one, must not load them either."""
    code = """
import sys, torch, stages.train, stages.evaluate, stages.lr_range
loaded = lambda: sorted(n for n in ("mlflow", "pandas", "sqlalchemy") if n in sys.modules)
torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)  # imports torch._dynamo, which scans sys.modules
print(loaded())
from chargpt.tracking import connection
connection.store_errors()
print(loaded())
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    before, after = out.splitlines()[:2]
    assert before == "[]" and "'mlflow'" in after and "'sqlalchemy'" in after
