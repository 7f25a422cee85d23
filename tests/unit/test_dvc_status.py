"""`chargpt runs`: one line a run from dvc.lock and DVC's status (the real `dvc status` after real runs is in
tests/e2e/test_pipeline_e2e.py)."""

import yaml

from chargpt.pipeline.dvc_status import describe, run_statuses, table


def lock(root, stages):
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {s: {"cmd": "x"} for s in stages}}))


def test_each_run_is_trained_pulled_or_not_and_stale_says_why(tmp_path):
    lock(tmp_path, ["lr_range_test@a", "train@a", "evaluate@a", "lr_range_test@b", "train@b", "train@c"])
    (tmp_path / "models/a").mkdir(parents=True)
    (tmp_path / "models/a/model.pt").write_bytes(b"")
    (tmp_path / "models/b").mkdir(parents=True)
    (tmp_path / "models/b/model.pt").write_bytes(b"")
    status = {
        "train@b": [
            {"changed deps": {"chargpt/model/gpt.py": "modified", "params.yaml": {"runs.b": "modified"}}},
            {"changed outs": {"models/b/model.pt": "deleted"}},
            "changed command",
        ],
    }
    a, b, c, d = run_statuses(tmp_path, ["a", "b", "c", "d"], status)
    assert (a.trained, a.state, a.why) == ("yes", "up to date", "")
    assert (b.trained, b.state) == ("yes", "stale")
    assert b.why == (
        "train: chargpt/model/gpt.py modified, param runs.b modified, output models/b/model.pt deleted, "
        "changed command; evaluate: never run"
    )
    assert (c.trained, c.state, c.why) == ("not pulled", "stale", "dvc pull train@c; evaluate: never run")
    assert (d.trained, d.state, d.why) == ("no", "not run", "dvc repro evaluate@d")
    lines = table([a, b, d]).splitlines()
    assert lines[0].split() == ["run", "trained", "state", "why", "/", "next"]
    assert lines[1].split()[:4] == ["a", "yes", "up", "to"] and lines[3].endswith("dvc repro evaluate@d")


def test_a_stage_without_changes_says_nothing():
    assert describe([]) == ""
    assert describe(["always changed"]) == "always changed"
