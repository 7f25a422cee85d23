import math

import pytest
import torch

from chargpt.config import LRRangeTestConfig, ModelConfig
from chargpt.batches import BatchSampler
from chargpt.lr_range import lr_at, range_test
from chargpt.model import GPT
from conftest import tiny_text


def test_lr_grows_exponentially_from_start_to_end():
    cfg = LRRangeTestConfig(lr_start=1e-5, lr_end=1e4, iterations=10, skip_start=0, smoothing=0.5)
    assert [lr_at(cfg, i) for i in range(10)] == pytest.approx([10.0**e for e in range(-5, 5)], rel=1e-12)


def test_range_test_stops_on_divergence_and_suggests_below_it():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, d_model=32, n_head=2, d_ff=64, context=16, dropout=0.0))
    data = torch.frombuffer(bytearray(tiny_text(20_000)), dtype=torch.uint8)
    sampler = BatchSampler(data, 16, 8, seed=0, device=torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    cfg = LRRangeTestConfig(lr_start=1e-3, lr_end=1e4, iterations=80, skip_start=3, divergence=2.0)
    result = range_test(model, opt, sampler.next, cfg)
    assert result.stopped_early and len(result.lrs) < 80  # LR 1e4 with SGD diverges long before the end
    i_min = result.smoothed.index(min(result.smoothed[3:]))
    assert result.lr_at_min_loss == result.lrs[i_min]
    assert result.suggested_lr == pytest.approx(result.lr_at_min_loss / 10)
    assert all(math.isfinite(v) for v in result.smoothed)
