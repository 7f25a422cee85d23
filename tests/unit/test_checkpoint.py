import pytest
import torch

from chargpt.errors import CheckpointError
from chargpt.model.config import ModelConfig
from chargpt.model.gpt import GPT
from chargpt.pipeline.config import RunConfig
from chargpt.train.checkpoint import load_model, save_checkpoint

CFG = ModelConfig(n_layer=1, d_model=16, n_head=2, d_ff=32, context=8, dropout=0.0)


def saved(tmp_path):
    model = GPT(CFG)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, RunConfig(name="t", model=CFG).model_dump(mode="json"), step=7, mlflow_run_id="abc")
    return model, path


def test_round_trip(tmp_path):
    model, path = saved(tmp_path)
    loaded, state = load_model(path, expected=CFG)
    assert state["step"] == 7 and state["mlflow_run_id"] == "abc"
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp file left behind


def test_truncated_checkpoint_names_the_file(tmp_path):
    _, path = saved(tmp_path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=f"{path}: not a readable checkpoint"):
        load_model(path)


def test_other_model_shape_is_named(tmp_path):
    _, path = saved(tmp_path)
    with pytest.raises(CheckpointError, match="another model shape \\(d_model: expected 32, checkpoint has 16"):
        load_model(path, expected=CFG.model_copy(update={"d_model": 32}))
