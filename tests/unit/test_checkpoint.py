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
    rms = {name: p.detach().abs() + 0.1 for name, p in model.named_parameters()}  # as the train stage stores them
    save_checkpoint(path, model, RunConfig(name="t", model=CFG).model_dump(mode="json"), step=7, mlflow_run_id="abc",
                    dynamic_rms=rms)  # fmt: skip
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


def crafted(tmp_path, state):
    path = tmp_path / "crafted.pt"
    torch.save(state, path)
    return path


def test_a_tiny_file_asking_for_a_huge_model_is_refused_before_it_is_built(tmp_path):
    config = RunConfig(name="t", model=CFG).model_dump(mode="json")
    config["model"] |= {"n_layer": 40, "d_model": 65536, "n_head": 1, "d_ff": 262144}  # 8 TB of fp32 weights
    path = crafted(tmp_path, {"format_version": 1, "model": GPT(CFG).state_dict(), "config": config, "step": 0})
    with pytest.raises(CheckpointError, match=r"weights do not fit the model config stored with them: .* missing"):
        load_model(path)


def test_a_model_larger_than_the_free_memory_is_refused_naming_its_size(tmp_path, monkeypatch):
    from chargpt.train import checkpoint

    _, path = saved(tmp_path)
    monkeypatch.setattr(checkpoint, "available_memory", lambda: 1000)
    with pytest.raises(CheckpointError, match=r"its model needs 0\.0 GiB, more than the 0\.0 GiB this machine has"):
        load_model(path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("config"), "holds no model config (config.model)"),
        (lambda s: s.pop("model"), "holds no weights (model)"),
        (lambda s: s["config"]["model"].update(n_head=3), "its model config is invalid: n_head: 3 must divide d_model"),
        (lambda s: s["config"]["model"].update(d_model=-1), "its model config is invalid: d_model:"),
        (lambda s: s["config"]["model"].update(surprise=1), "its model config is invalid: surprise: unknown key"),
        (lambda s: s["model"].pop("head.weight"), "head.weight missing"),
        (lambda s: s["model"].update(extra=torch.zeros(1)), "extra not in this model"),
        (lambda s: s["model"].update({"tok_emb.weight": torch.zeros(256, 8)}),
         "tok_emb.weight: expected (256, 16), file has (256, 8)"),
        (lambda s: s.update(dynamic_rms=[1.0]), "dynamic_rms: expected one tensor per parameter"),
        (lambda s: s["dynamic_rms"].pop("head.weight"), "dynamic_rms: expected one tensor per parameter"),
        (lambda s: s["dynamic_rms"].update({"tok_emb.weight": torch.zeros(256, 8)}),
         "dynamic_rms.tok_emb.weight: expected float32 (256, 16), got torch.float32 (256, 8)"),
        (lambda s: s["dynamic_rms"].update({"head.weight": -s["dynamic_rms"]["head.weight"]}),
         "dynamic_rms.head.weight: expected finite values >= 0"),
    ],
)  # fmt: skip
def test_a_file_that_lacks_or_contradicts_is_one_line_saying_what(tmp_path, change, message):
    model, path = saved(tmp_path)
    state = torch.load(path, weights_only=True)
    change(state)
    with pytest.raises(CheckpointError) as e:
        load_model(crafted(tmp_path, state))
    assert message in str(e.value) and str(tmp_path / "crafted.pt") in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("options", [{}, {"positions": "rope"}], ids=["plain", "rope"])
def test_loading_a_model_does_not_import_torch_dynamo(tmp_path, options):
    """The shape check builds the model on the meta device without its random init: normal_ there imports
    torch._dynamo, a second and more of every command that loads a model (sample, score, evaluate); so would the
    rotary angles, computed there."""
    import subprocess
    import sys

    cfg = ModelConfig(n_layer=1, d_model=16, n_head=2, d_ff=32, context=8, **options)
    save_checkpoint(tmp_path / "m.pt", GPT(cfg), {"model": cfg.model_dump()}, step=0)
    code = f"""
import sys
from chargpt.use.inference import load_trained
load_trained({str(tmp_path / "m.pt")!r})
print("torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_rms_update_on_a_model_file_without_its_rms_is_refused_naming_the_file(tmp_path):
    from chargpt.train.checkpoint import needed_rms

    model, path = saved(tmp_path)
    state = torch.load(path, weights_only=True)
    assert needed_rms(path, state["dynamic_rms"], "rms") is state["dynamic_rms"]
    assert needed_rms(path, None, "sgd") is None and needed_rms(path, None, None) is None
    with pytest.raises(CheckpointError, match=rf"{tmp_path / 'old.pt'}: holds no dynamic_rms .* train the model again"):
        needed_rms(tmp_path / "old.pt", None, "rms")
