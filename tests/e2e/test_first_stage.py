"""A fresh pipeline with a bad run reports it from its first stage, before the corpus is fetched, while the data
stages depend on no run's params."""

import time

import yaml
from conftest import TINY_RUN, make_project, run


def test_a_bad_run_stops_a_fresh_pipeline_at_once_naming_the_key(tmp_path):
    root, env = make_project(tmp_path / "project", {"tiny": TINY_RUN})
    started = time.monotonic()
    proc = run(["dvc", "exp", "run", "-S", "runs.tiny.train.iterations=ten", "evaluate@tiny"], root, env, check=False)
    assert proc.returncode != 0 and "runs.tiny.train.iterations: Input should be a valid integer" in proc.stderr
    assert not (root / "data/raw/corpus.bin").exists() and time.monotonic() - started < 60
    download = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["download"]
    assert download["params"] == ["data"]  # the check is the download's command, not a dependency of its output
    assert download["cmd"].startswith("python -m chargpt.cli check && ")
