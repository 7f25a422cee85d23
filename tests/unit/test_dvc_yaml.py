"""dvc.yaml says what the code does: each stage's code deps are the modules its script runs, every run is in the
pipeline, and `dvc status` reports exactly the stages a change affects."""

import io
import json
import subprocess
import sys
import tarfile

import pytest
import yaml
from conftest import REPO

from chargpt.pipeline.dvc_sync import REPORTING, RUNS_FILE, chargpt_imports, code_deps, is_code, stage_script


def test_dvc_yaml_and_the_runs_file_are_in_sync_with_the_code_and_params_yaml():
    proc = subprocess.run(
        [sys.executable, "-m", "chargpt.cli", "sync-dvc", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_each_stage_lists_every_module_its_script_imports_transitively():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        deps = {d for d in body["deps"] if d.endswith(".py")}
        script = next(d for d in deps if d.startswith("stages/"))
        # Walked here independently of the generator's walk: each listed module's own imports are listed too.
        for module in deps:  # all but the reporting package, which computes no result
            imported = {m for m in chargpt_imports(REPO / module, REPO) if not m.startswith(REPORTING)}
            assert imported <= deps, (name, module)
        assert "chargpt/__init__.py" in deps and script in body["cmd"]


def test_the_walk_finds_imports_inside_functions_and_from_package_imports(tmp_path):
    (tmp_path / "chargpt").mkdir()
    (tmp_path / "stages").mkdir()
    for name in ("__init__", "a", "b", "c", "d"):
        (tmp_path / "chargpt" / f"{name}.py").write_text("")
    (tmp_path / "chargpt" / "a.py").write_text("def f():\n    from chargpt.b import x\n")
    (tmp_path / "chargpt" / "b.py").write_text("import chargpt.c\n")
    (tmp_path / "stages" / "s.py").write_text("from chargpt import a\nimport os\n")
    assert code_deps("stages/s.py", tmp_path) == [
        "stages/s.py",
        "chargpt/__init__.py",
        "chargpt/a.py",
        "chargpt/b.py",
        "chargpt/c.py",
    ]


def test_the_deps_check_fails_on_the_dvc_yaml_of_3f54500(tmp_path):
    """That commit's dvc.yaml left modules out of every stage (chargpt/muon.py from train, for one): the walk, run on
    that commit's own code, finds what its dvc.yaml lacks."""
    archive = subprocess.run(["git", "archive", "3f54500", "dvc.yaml", "stages", "chargpt"], cwd=REPO,
                             capture_output=True)  # fmt: skip
    if archive.returncode != 0:
        pytest.skip("commit 3f54500 is not in this clone")
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python 3.11.4+ (Debian 12 has 3.11.2)
    tarfile.open(fileobj=io.BytesIO(archive.stdout)).extractall(tmp_path, **safe)
    missing = {}
    for name, stage in yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"].items():
        listed = {d for d in stage.get("do", stage)["deps"] if isinstance(d, str) and is_code(d)}
        missing[name] = set(code_deps(stage_script(stage), tmp_path)) - listed
    assert "chargpt/muon.py" in missing["train"]
    assert len(missing) == 5 and all(missing.values()), missing


@pytest.mark.parametrize(
    "line, refused",
    [
        ("from .muon import Muon", "relative import `from .muon import ...`"),
        ("from . import muon", "relative import `from . import ...`"),
        ("importlib.import_module('chargpt.train.muon')", "import_module() imports a module named at run time"),
        ("__import__('chargpt.train.muon')", "__import__() imports a module named at run time"),
    ],
)
def test_sync_dvc_refuses_an_import_it_cannot_follow_naming_the_file_and_line(tmp_path, line, refused):
    import shutil

    for name in ("dvc.yaml", RUNS_FILE, "params.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    for tree in ("stages", "chargpt"):
        shutil.copytree(REPO / tree, tmp_path / tree, ignore=shutil.ignore_patterns("__pycache__"))
    loop = tmp_path / "chargpt/train/loop.py"
    text = loop.read_text()
    loop.write_text(text + f"\n\ndef later():\n    {line}\n")
    before = (tmp_path / "dvc.yaml").read_text()
    proc = subprocess.run([sys.executable, "-m", "chargpt.cli", "sync-dvc"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"chargpt/train/loop.py:{text.count(chr(10)) + 4}: {refused}" in proc.stderr
    assert (tmp_path / "dvc.yaml").read_text() == before


def test_the_runs_file_names_each_runs_entry_and_its_base():
    runs = yaml.safe_load((REPO / RUNS_FILE).read_text())["pipeline_runs"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, entry in params["runs"].items():
        base = (entry or {}).get("base", name)
        root = (params["runs"][base] or {}).get("base", base)  # the chains here are at most 3 runs long
        assert runs[name] == {"own": f"runs.{name}", "base": f"runs.{base}", "root": f"runs.{root}"}
    grid = params["grids"]["grid"]
    assert sum(r["own"] == "grids.grid" and r["base"] == f"runs.{grid['base']}" for r in runs.values()) == 8


def test_the_overlay_plots_list_every_run():
    runs = list(yaml.safe_load((REPO / RUNS_FILE).read_text())["pipeline_runs"])
    plots = {k: v for item in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"] for k, v in item.items()}
    assert set(plots) == {"val_bpc", "val_accuracy", "train_loss", "lr_range_test", "lr_range_accuracy"}
    assert list(plots["val_bpc"]["y"]) == [f"reports/{run}/train_curve.tsv" for run in runs]
    assert set(plots["val_accuracy"]["y"].values()) == {"val_probe_accuracy"}
    assert set(plots["lr_range_accuracy"]["y"].values()) == {"val_accuracy"} and plots["lr_range_accuracy"]["x"] == "lr"
    assert plots["lr_range_test"]["template"] == "lr_range_log" and plots["lr_range_test"]["x"] == "lr"


def test_shipped_templates_are_vega_lite_with_the_anchors_dvc_fills():
    for name in ("runs_overlay", "lr_range_log"):
        text = (REPO / ".dvc/plots" / f"{name}.json").read_text()
        spec = json.loads(text)
        assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/")
        assert spec["data"] == {"values": "<DVC_METRIC_DATA>"}
        assert "<DVC_METRIC_X>" in text and "<DVC_METRIC_Y>" in text
    log_x = json.loads((REPO / ".dvc/plots/lr_range_log.json").read_text())["layer"][0]["encoding"]["x"]
    assert log_x["scale"]["type"] == "log"


def test_sync_dvc_refuses_a_run_that_cannot_run_and_writes_nothing(tmp_path):
    """A grid whose axis names no key: one line with the key path, exit 1, dvc.yaml and the runs file untouched."""
    import shutil

    for name in ("dvc.yaml", RUNS_FILE, "params.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["grids"]["grid"]["axes"]["mom"]["key"] = "schedule.momentum_maxx"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = {name: (tmp_path / name).read_text() for name in ("dvc.yaml", RUNS_FILE)}
    proc = subprocess.run([sys.executable, "-m", "chargpt.cli", "sync-dvc"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "grids.grid.axes.mom.values.090 (schedule.momentum_maxx): unknown key (typo?)" in proc.stderr
    assert {name: (tmp_path / name).read_text() for name in before} == before
