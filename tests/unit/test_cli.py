"""The `chargpt` command's manners: a mistyped command or run gets the closest match, in one line."""

import shutil

import pytest
from conftest import REPO

from chargpt import cli
from chargpt.errors import CheckpointError
from chargpt.use.inference import checkpoint_path


def test_a_mistyped_command_gets_the_closest_one():
    with pytest.raises(SystemExit) as exit_:
        cli.main(["sampel"])
    message = str(exit_.value)
    assert message.startswith("chargpt: unknown command 'sampel'; did you mean 'sample'?") and "\n" not in message
    with pytest.raises(SystemExit, match="unknown command 'xyzzy'; commands: compare, ui, sample"):
        cli.main(["xyzzy"])


def test_a_mistyped_run_gets_the_closest_one_and_an_untrained_run_says_how_to_get_it(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    with pytest.raises(
        CheckpointError, match="run 'quikstart' is not defined in .*params.yaml; did you mean 'quickstart'\\?"
    ):
        checkpoint_path("quikstart", None, tmp_path)
    with pytest.raises(CheckpointError, match="run 'quickstart' has not been trained here.*dvc pull train@quickstart"):
        checkpoint_path("quickstart", None, tmp_path)
    (tmp_path / "models" / "quickstart" / "model.pt").mkdir(parents=True)  # there, but not a file: not "untrained"
    with pytest.raises(CheckpointError, match=r"models/quickstart/model.pt: a directory, not a regular file; run 'qu"):
        checkpoint_path("quickstart", None, tmp_path)


def test_a_clone_without_the_runs_lock_entry_says_what_is_missing(tmp_path):
    """The push/pull recipe's missing step: dvc.lock (with params.yaml) committed and pushed by the training clone."""
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    missing = r"records no train@quickstart, so `dvc pull` cannot fetch it.*(git add dvc.lock params.yaml reports data"
    with pytest.raises(CheckpointError, match=missing.replace("(", r"\(")):
        checkpoint_path("quickstart", None, tmp_path)
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  train@quickstart:\n    cmd: python stages/train.py\n")
    with pytest.raises(CheckpointError, match=r"not found: run 'quickstart' has not been trained here.*dvc pull"):
        checkpoint_path("quickstart", None, tmp_path)
