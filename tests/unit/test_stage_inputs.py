"""A stage that reads another stage's JSON (meta.json, lr_range_test.json, the corpus's source record) and finds it
damaged or written by an older version ends in one line naming the file and what it lacks: never a traceback."""

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, TINY_RUN, params_with_runs

from chargpt.errors import DataError
from chargpt.pipeline.harness import run_stage
from chargpt.pipeline.stage import resolve_lr_max, split_meta

GOOD_META = {"splits": {name: {"bytes": 100, "sha256": "0" * 64} for name in ("train", "val", "test")}}


@pytest.mark.parametrize(
    "content, said",
    [
        ("{not json", "meta.json: not valid JSON"),
        (json.dumps({"train_bytes": 100}), "meta.json: no splits.train.bytes (written by an older version"),
        (json.dumps({"splits": {"train": {"bytes": 1, "sha256": "0"}}}), "meta.json: no splits.val.bytes"),
        ("\xff\xfe", "meta.json: not valid JSON"),
    ],
)
def test_a_damaged_or_older_meta_json_is_one_line_naming_the_file_and_key(tmp_path, content, said, caplog):
    (tmp_path / "meta.json").write_text(content, encoding="latin-1")
    with pytest.raises(DataError, match=re.escape(said)):
        split_meta(tmp_path)
    with pytest.raises(SystemExit) as e:
        run_stage(lambda: split_meta(tmp_path))
    assert e.value.code == 1 and said.split(":")[0] in caplog.text


def test_a_good_meta_json_reads_as_written(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps(GOOD_META))
    assert split_meta(tmp_path) == GOOD_META


def test_a_range_test_without_its_suggestion_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports/r").mkdir(parents=True)
    (tmp_path / "reports/r/lr_range_test.json").write_text(json.dumps({"lr_at_min_loss": 0.01}))
    with pytest.raises(DataError, match="lr_range_test.json: no suggested_lr"):
        resolve_lr_max("r", 1e-4, "auto")


def test_the_train_stage_on_a_damaged_meta_json_ends_in_one_line(tmp_path):
    import yaml

    params = params_with_runs({"tiny": TINY_RUN})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data/processed").mkdir(parents=True)
    (tmp_path / "data/processed/meta.json").write_text('{"splits": {"train": ')  # a write cut short
    env = os.environ | {"CHARGPT_TRACKING": "off"}
    proc = subprocess.run([sys.executable, str(REPO / "stages/train.py"), "--run", "tiny"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "data/processed/meta.json: not valid JSON" in proc.stderr


def test_each_stage_sweeps_the_temporaries_a_killed_one_left_in_its_folders(tmp_path, caplog):
    from chargpt.pipeline.harness import sweep_temporaries

    caplog.set_level("INFO")
    (tmp_path / "reports/r").mkdir(parents=True)
    left = [tmp_path / "reports/r/.eval.json.k2j3.tmp", tmp_path / "reports/r/.train_curve.tsv.x9.tmp"]
    for path in left:
        path.write_text("half")
    (tmp_path / "reports/r/.download-abc").mkdir()
    kept = [tmp_path / "reports/r/eval.json", tmp_path / "reports/r/.hidden", tmp_path / "reports/r/x.tmp"]
    for path in kept:
        path.write_text("whole")
    assert sweep_temporaries(tmp_path / "reports/r", tmp_path / "absent") == sorted(left) + [
        tmp_path / "reports/r/.download-abc"
    ]
    assert sorted((tmp_path / "reports/r").iterdir()) == sorted(kept)
    assert "removed 3 temporary file(s) a killed stage left" in caplog.text
    # every stage sweeps its own output folders before it writes
    swept = {"download": "Path(args.out).parent", "preprocess": "args.out", "lr_range": "report_dir",
             "train": "model_path(name).parent, report_dir(name)", "evaluate": "report_dir"}  # fmt: skip
    for stage, folders in swept.items():
        assert f"sweep_temporaries({folders}" in (REPO / f"stages/{stage}.py").read_text(), stage
