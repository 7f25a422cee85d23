"""A run's name becomes a directory (models/<run>, reports/<run>, checkpoints/<run>, which train removes) and a word
of the shell commands DVC runs: every name params.yaml defines, as a run or through a grid, and every --run, matches
RUN_NAME_PATTERN, or is refused in one line naming where it is written, before anything is written."""

import copy
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chargpt.errors import ConfigError
from chargpt.pipeline.config import RUN_NAME_PATTERN, check_run_name, load_all_runs
from chargpt.pipeline.dvc_sync import RUNS_FILE
from chargpt.pipeline.dvc_sync import main as sync_dvc

BASE = yaml.safe_load((REPO / "params.yaml").read_text())
HOSTILE_PARTS = ["/", "\\", "../", ";", "|", "&", "$(", "`", "'", '"', ">", "<", "</script><script>", " ", "\t", "\n",
                 "\x00", "é", "名", "*", "?", "~", "#", "=", "{", "}"]  # fmt: skip
# A name with at least one character outside the pattern, or one that starts with `_`, `.` or `-`, or empty.
HOSTILE = st.one_of(
    st.just(""),
    st.builds(
        lambda a, bad, b: a + bad + b,
        st.from_regex(r"[a-z0-9]{0,4}", fullmatch=True),
        st.sampled_from(HOSTILE_PARTS),
        st.from_regex(r"[a-z0-9_.-]{0,4}", fullmatch=True),
    ),  # fmt: skip
    st.builds(
        lambda first, rest: first + rest,
        st.sampled_from(["_", ".", "-"]),
        st.from_regex(r"[a-z0-9]{0,6}", fullmatch=True),
    ),  # fmt: skip
    st.text(min_size=101, max_size=120, alphabet="ab"),
)
VALID = st.from_regex(f"{RUN_NAME_PATTERN}", fullmatch=True)


def with_run(name: str) -> dict:
    params = copy.deepcopy(BASE)
    params["runs"][name] = {"base": "quickstart", "train": {"iterations": 10}}
    return params


@settings(max_examples=150, deadline=None)
@given(name=HOSTILE)
def test_a_hostile_run_name_is_refused_naming_it(name):
    assert not re.fullmatch(RUN_NAME_PATTERN, name)
    with pytest.raises(ConfigError) as e:
        check_run_name(name, "params.yaml: runs")
    message = str(e.value)
    assert message.startswith("params.yaml: runs: run name ") and repr(name) in message
    assert "\n" not in message  # one line, whatever the name holds (repr escapes it)


@settings(max_examples=100, deadline=None)
@given(name=VALID)
def test_every_name_of_the_pattern_is_a_run(name):
    assert check_run_name(name, "runs") == name


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=HOSTILE)
def test_params_yaml_with_a_hostile_run_is_refused_at_load(tmp_path_factory, name):
    path = tmp_path_factory.mktemp("p") / "params.yaml"
    path.write_text(yaml.safe_dump(with_run(name)))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: runs: run name {re.escape(repr(name))} "):
        load_all_runs(path)


@pytest.mark.parametrize(
    "axis, label, bad",
    [("mom", "0;touch x", "grid_min1e-3_mom0;touch x_wd1e-4"), ("m/", "1", "grid_min1e-3_m/1_wd1e-4")],
)
def test_a_grid_whose_labels_make_a_hostile_name_is_refused(tmp_path, axis, label, bad):
    params = copy.deepcopy(BASE)
    axes = params["grids"]["grid"]["axes"]
    params["grids"]["grid"]["axes"] = {
        "min": axes["min"],
        axis: {"key": "schedule.momentum_max", "values": {label: 0.9}},
        "wd": axes["wd"],
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(ConfigError, match=rf": grids\.grid: run name {re.escape(repr(bad))} is not allowed"):
        load_all_runs(path)


def test_a_hostile_grid_name_is_refused(tmp_path):
    params = copy.deepcopy(BASE)
    params["grids"] = {"../g": params["grids"]["grid"]}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r": grids: run name '\.\./g' is not allowed"):
        load_all_runs(path)


@pytest.mark.parametrize("name", ["x;touch pwned", "../escape", "x</script><script>alert(1)</script>"])
def test_sync_dvc_refuses_a_hostile_run_and_writes_nothing(tmp_path, monkeypatch, name):
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_run(name), sort_keys=False))
    before = (tmp_path / "dvc.yaml").read_bytes()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=re.escape(f"params.yaml: runs: run name {name!r} is not allowed")):
        sync_dvc([])
    assert (tmp_path / "dvc.yaml").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc.yaml", "params.yaml"]
    assert not (tmp_path / RUNS_FILE).exists() and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("command", [["stages/train.py"], ["-m", "chargpt.cli", "sample", "--prompt", "a"]])
def test_a_hostile_run_argument_is_a_usage_error(tmp_path, command):
    script = [str(REPO / command[0])] if command[0].endswith(".py") else command
    proc = subprocess.run([sys.executable, *script, *command[1:], "--run", "../x;id"], cwd=tmp_path,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2
    assert "argument --run: run name '../x;id' is not allowed" in proc.stderr
    assert list(tmp_path.iterdir()) == []
