"""tools/upgrade_files.py: model files, training states and params.yaml files written before options left the code,
made readable by this version; one that turns a retired option on refused, naming it and the commit where it runs."""

import importlib.util

import pytest
import torch
import yaml
from conftest import REPO, TINY_MODEL, params_with_runs

from chargpt.errors import CheckpointError, ConfigError
from chargpt.model.config import ModelConfig
from chargpt.model.gpt import GPT
from chargpt.pipeline.config import RunConfig, load_run_config
from chargpt.train.checkpoint import config_differences, load_model, save_checkpoint


def upgrade_files():
    spec = importlib.util.spec_from_file_location("upgrade_files", REPO / "tools/upgrade_files.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOL = upgrade_files()
OFF = {section: {key: off for key, (off, _) in options.items()} for section, options in TOOL.RETIRED.items()}


def as_older_versions_wrote(config: dict) -> dict:
    """A config (sections of dicts) as the commits before the options left wrote it: every retired option, off."""
    return {section: values | OFF.get(section, {}) if isinstance(values, dict) else values
            for section, values in config.items()}  # fmt: skip


def test_an_older_model_file_is_refused_naming_the_tool_and_its_copy_loads_the_same_model(tmp_path, capsys):
    torch.manual_seed(0)
    cfg = ModelConfig(**TINY_MODEL)
    model = GPT(cfg).eval()
    stored = as_older_versions_wrote(RunConfig(name="t", model=cfg).model_dump(mode="json"))
    save_checkpoint(tmp_path / "old.pt", model, stored, step=7)
    with pytest.raises(CheckpointError) as refused:
        load_model(tmp_path / "old.pt")
    assert "old.pt: its model config is invalid: activation: unknown key, qk_norm: unknown key, " in str(refused.value)
    assert "written by an older chargpt? `python tools/upgrade_files.py OLD NEW`" in str(refused.value)

    assert TOOL.main([str(tmp_path / "old.pt"), str(tmp_path / "new.pt")]) == 0
    assert "new.pt: " in capsys.readouterr().out
    loaded, state = load_model(tmp_path / "new.pt", expected=cfg)
    idx = torch.randint(0, 256, (2, 16))
    assert torch.equal(model(idx)[0], loaded.eval()(idx)[0]) and state["step"] == 7
    # an existing output is not replaced unless asked; a current file needs nothing
    assert TOOL.main([str(tmp_path / "old.pt"), str(tmp_path / "new.pt")]) == 1
    assert "new.pt: exists; --force replaces it" in capsys.readouterr().err
    assert TOOL.main([str(tmp_path / "new.pt"), str(tmp_path / "newer.pt")]) == 0
    assert "holds no retired option" in capsys.readouterr().out and not (tmp_path / "newer.pt").exists()


def test_a_file_that_turns_a_retired_option_on_is_refused_naming_it_and_its_commit(tmp_path, capsys):
    cfg = ModelConfig(**TINY_MODEL)
    stored = as_older_versions_wrote(RunConfig(name="t", model=cfg).model_dump(mode="json"))
    stored["model"]["smear"] = True
    save_checkpoint(tmp_path / "smear.pt", GPT(cfg), stored, step=1)
    assert TOOL.main([str(tmp_path / "smear.pt"), str(tmp_path / "new.pt")]) == 1
    err = capsys.readouterr().err
    assert "smear.pt: turns on model.smear: True (it runs at commit 65844c6)" in err
    assert not (tmp_path / "new.pt").exists()


def test_an_older_training_state_resumes_once_upgraded(tmp_path, capsys):
    now = RunConfig(name="t", model=ModelConfig(**TINY_MODEL)).model_dump(mode="json")
    old = as_older_versions_wrote(now)
    assert "model.qk_norm: checkpoint False, now None" in config_differences(old, now)
    torch.save({"kind": "training_state", "config": old, "model": {}}, tmp_path / "last.pt")
    assert TOOL.main([str(tmp_path / "last.pt"), str(tmp_path / "upgraded.pt")]) == 0
    upgraded = torch.load(tmp_path / "upgraded.pt", weights_only=True)
    assert config_differences(upgraded["config"], now) == [] and upgraded["kind"] == "training_state"


def test_a_params_file_that_sets_retired_options_gets_the_lines_to_delete(tmp_path, capsys):
    params = params_with_runs({"r": {"model": {"qk_norm": False}, "train": {"ema_decay": 0.99}}})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(ConfigError) as refused:
        load_run_config("r", path)
    assert "runs.r.model.qk_norm: unknown key (typo?); or an option that has left the code?" in str(refused.value)
    assert TOOL.main([str(path)]) == 1
    lines = path.read_text().splitlines()
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 2
    for entry, key, value in ((listed[0], "qk_norm", "false"), (listed[1], "ema_decay", "0.99")):
        number = int(entry.split(":")[1])
        assert lines[number - 1].strip() == f"{key}: {value}", (entry, lines[number - 1])
    assert listed[0].endswith("runs.r.model.qk_norm: False: delete this line")
    assert listed[1].endswith(
        "runs.r.train.ema_decay: 0.99: on, which this version no longer runs (it runs at commit d49c848)"
    )
    path.write_text(yaml.safe_dump(params_with_runs({"r": {}})))
    assert TOOL.main([str(path)]) == 0 and "sets no retired option" in capsys.readouterr().out
