"""research/dynamic_eval_sweep.py: at a vanishing learning rate a setting scores what the static protocol does; a real
step of Krause's update (by the model file's training-gradient RMS) learns the repeats, mixed or not; each record says
what ran."""

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, TINY_MODEL

from chargpt.data.batches import load_split
from chargpt.evaluation.scoring import gradient_rms, split_score
from chargpt.model.config import ModelConfig
from chargpt.model.gpt import GPT
from chargpt.train.checkpoint import save_checkpoint
from chargpt.use.inference import load_trained


def test_the_sweep_keeps_the_protocol_and_the_rms_update_learns(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    config, model = ModelConfig(**TINY_MODEL), GPT(ModelConfig(**TINY_MODEL))
    rng = np.random.default_rng(0)
    train = torch.from_numpy(rng.integers(0, 256, 5000, dtype=np.uint8))
    save_checkpoint(tmp_path / "model.pt", model, {"model": config.model_dump()}, step=0,
                    dynamic_rms=gradient_rms(model, train, torch.device("cpu")))  # fmt: skip
    (tmp_path / "split.bin").write_bytes(bytes(rng.integers(0, 256, 200, dtype=np.uint8)) * 4)
    spec = importlib.util.spec_from_file_location("dynamic_eval_sweep", REPO / "research/dynamic_eval_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["dynamic_eval_sweep.py", "--checkpoint", str(tmp_path / "model.pt"), "--split", str(tmp_path / "split.bin"),
            "--try", '{"optimizer": "rms", "lr": 1e-30, "stride": 16}',
            "--try", '{"optimizer": "rms", "lr": 3e-4, "decay": 1e-2, "stride": 16}', "--mixture", '{"order": 4}',
            "--out", str(tmp_path / "sweep.jsonl")]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    module.main()
    still, moved = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert [json.loads(line) for line in (tmp_path / "sweep.jsonl").read_text().splitlines()] == [still, moved]
    static = split_score(load_trained(tmp_path / "model.pt"), load_split(tmp_path / "split.bin"), 32, 64, 16)
    assert still["bpc_dynamic"] == pytest.approx(static.bpc, rel=1e-6)
    assert moved["bpc_dynamic"] < still["bpc_dynamic"] - 0.1
    assert moved["bpc_dynamic_mixed"] < moved["bpc_dynamic"] and moved["dynamic"]["optimizer"] == "rms"
