"""research/mixture_sweep.py: each setting's mixed BPC is the mixture's score of the model's own distributions, and
the context model alone learns what the text repeats."""

import importlib.util
import json
import math
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, TINY_MODEL

from chargpt.data.batches import load_split
from chargpt.evaluation.config import MixtureConfig
from chargpt.evaluation.scoring import split_score
from chargpt.model.config import ModelConfig
from chargpt.model.gpt import GPT
from chargpt.train.checkpoint import save_checkpoint
from chargpt.use.inference import load_trained


def test_the_sweep_reports_the_mixture_and_the_context_model_alone(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    config = ModelConfig(**TINY_MODEL)
    save_checkpoint(tmp_path / "model.pt", GPT(config), {"model": config.model_dump()}, step=0)
    block = bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8))
    (tmp_path / "split.bin").write_bytes(block * 4)
    spec = importlib.util.spec_from_file_location("mixture_sweep", REPO / "research/mixture_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["mixture_sweep.py", "--checkpoint", str(tmp_path / "model.pt"), "--split", str(tmp_path / "split.bin"),
            "--stride", "16", "--try", '{"order": 4, "table_bits": 12}',
            "--out", str(tmp_path / "sweep.jsonl")]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    module.main()
    row = json.loads(capsys.readouterr().out)
    assert json.loads((tmp_path / "sweep.jsonl").read_text()) == row
    model, data = load_trained(tmp_path / "model.pt"), load_split(tmp_path / "split.bin")
    score = split_score(model, data, 32, 64, 16, mixture=MixtureConfig(order=4, table_bits=12))
    assert row["bpc_static"] == pytest.approx(score.bpc, rel=1e-12) and score.bpc > 7  # untrained: about 8 bits
    assert row["bpc_mixed"] == pytest.approx(score.mixed.bpc, rel=1e-12) and score.mixed.bpc < 4  # repeats counted
    assert 2 < row["bpc_context_model"] < 4 and math.isfinite(row["seconds"])
