import math

import pytest
import torch

from chargpt.config import ModelConfig
from chargpt.evaluation import split_bpc, window_plan
from chargpt.model import GPT


class Uniform(torch.nn.Module):
    """Predicts every byte with probability 1/256."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, idx, targets=None):
        return torch.zeros(*idx.shape, 256) + 0 * self.dummy, None


def scored_positions(n: int, context: int, stride: int) -> list[int]:
    T = min(context, n - 1)
    out = []
    for start, k in window_plan(n, context, stride):
        out += list(range(start + 1 + T - k, start + 1 + T))  # target byte indices scored by this window
    return out


@pytest.mark.parametrize("n, context, stride", [(2, 8, 8), (9, 8, 8), (10, 8, 8), (100, 8, 8), (100, 8, 3),
                                                (100, 8, 1), (1000, 64, 17), (5, 64, 64)])
def test_every_byte_after_the_first_is_scored_exactly_once(n, context, stride):
    assert scored_positions(n, context, stride) == list(range(1, n))
    T = min(context, n - 1)
    assert all(0 <= s and s + T + 1 <= n for s, _ in window_plan(n, context, stride))


def test_uniform_model_scores_exactly_eight_bits():
    data = torch.randint(0, 256, (5000,), dtype=torch.uint8)
    for stride in (None, 7):
        bpc, n = split_bpc(Uniform(), data, context=64, batch_size=8, stride=stride)
        assert n == 4999 and bpc == pytest.approx(8.0, abs=1e-9)


def test_split_bpc_matches_direct_computation():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, d_model=16, n_head=2, d_ff=32, context=8, dropout=0.0)).eval()
    data = torch.randint(0, 256, (8 * 5 + 1,), dtype=torch.uint8)
    bpc, _ = split_bpc(model, data, context=8, batch_size=2)
    with torch.no_grad():
        windows = data[:40].view(5, 8).long()
        targets = data[1:41].view(5, 8).long()
        _, loss = model(windows, targets)
    assert bpc == pytest.approx(loss.item() / math.log(2), rel=1e-5)
