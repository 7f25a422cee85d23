import math

import pytest
import torch

from chargpt.evaluation.config import DynamicEvalConfig
from chargpt.evaluation.scoring import (
    RMS_BATCHES,
    SGD,
    KrauseRMS,
    dynamic_score,
    gradient_rms,
    split_score,
    window_plan,
)
from chargpt.model.config import ModelConfig
from chargpt.model.gpt import GPT


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


@pytest.mark.parametrize(
    "n, context, stride",
    [(2, 8, 8), (9, 8, 8), (10, 8, 8), (100, 8, 8), (100, 8, 3), (100, 8, 1), (1000, 64, 17), (5, 64, 64)],
)
def test_every_byte_after_the_first_is_scored_exactly_once(n, context, stride):
    assert scored_positions(n, context, stride) == list(range(1, n))
    T = min(context, n - 1)
    assert all(0 <= s and s + T + 1 <= n for s, _ in window_plan(n, context, stride))


def test_uniform_model_scores_exactly_eight_bits():
    data = torch.randint(0, 256, (5000,), dtype=torch.uint8)
    for stride in (None, 7):
        score = split_score(Uniform(), data, context=64, batch_size=8, stride=stride)
        assert score.bytes_scored == 4999 and score.bpc == pytest.approx(8.0, abs=1e-9)


def test_split_score_matches_direct_computation():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, d_model=16, n_head=2, d_ff=32, context=8, dropout=0.0)).eval()
    data = torch.randint(0, 256, (8 * 5 + 1,), dtype=torch.uint8)
    score = split_score(model, data, context=8, batch_size=2)
    with torch.no_grad():
        windows = data[:40].view(5, 8).long()
        targets = data[1:41].view(5, 8).long()
        logits, loss = model(windows, targets)
    assert score.bpc == pytest.approx(loss.item() / math.log(2), rel=1e-5)
    assert score.accuracy == (logits.argmax(-1) == targets).float().mean().item()


class NextByteGuesser(torch.nn.Module):
    """Puts logit 10 on (byte + 1) mod 256 after every byte and 0 on the rest: its accuracy and BPC on any text are
    known in closed form."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, idx, targets=None):
        logits = 10.0 * torch.nn.functional.one_hot((idx + 1) % 256, 256).float() + self.dummy
        loss = None if targets is None else torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets)
        return logits, loss


@pytest.mark.parametrize("stride", [None, 5, 1])
def test_accuracy_and_bpc_of_a_model_whose_answer_is_known(stride):
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (3001,), generator=gen, dtype=torch.uint8)
    hits = torch.rand(3000, generator=gen) < 0.3  # byte j + 1 follows byte j at these positions
    for j in range(1, 3001):
        if hits[j - 1]:
            data[j] = (int(data[j - 1]) + 1) % 256
    right = ((data[:-1].long() + 1) % 256 == data[1:].long()).sum().item()
    normaliser = math.log(math.exp(10) + 255)  # every position's log-sum-exp
    nats = right * (normaliser - 10) + (3000 - right) * normaliser
    score = split_score(NextByteGuesser(), data, context=16, batch_size=7, stride=stride)
    assert score.accuracy == right / 3000 and score.bytes_scored == 3000
    assert score.bpc == pytest.approx(nats / (3000 * math.log(2)), rel=1e-12)
    # dynamic evaluation keeps the same protocol: at lr ~0 it scores exactly what the static one does
    dynamic = dynamic_score(
        NextByteGuesser(), data, context=16, settings=DynamicEvalConfig(lr=1e-30, optimizer="sgd", stride=stride)
    )
    assert dynamic.accuracy == right / 3000 and dynamic.bpc == pytest.approx(score.bpc, rel=1e-12)
    rms = {name: torch.ones_like(p) for name, p in NextByteGuesser().named_parameters()}
    krause = dynamic_score(NextByteGuesser(), data, 16, DynamicEvalConfig(lr=1e-30, optimizer="rms", stride=stride),
                           rms=rms)  # fmt: skip
    assert krause.accuracy == right / 3000 and krause.bpc == pytest.approx(score.bpc, rel=1e-12)


def test_krause_rms_steps_each_weight_by_its_gradient_over_its_training_rms_and_pulls_it_back():
    """Two weights of training RMS 0.5 and 0 (mean 0.25): steps of lr g / (0.5 + 0.025) and lr g / 0.025, then
    pulls of 0.1 x 0.5 / 0.25 = 0.2 and 0 of the way back to the trained values."""
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = KrauseRMS([w], [torch.tensor([0.5, 0.0])], lr=0.01, decay=0.1)
    w.grad = torch.tensor([0.21, -0.05])
    opt.step()
    moved = torch.tensor([1.0 - 0.01 * 0.21 / 0.525, 2.0 + 0.01 * 0.05 / 0.025])
    expected = moved + torch.tensor([0.2, 0.0]) * (torch.tensor([1.0, 2.0]) - moved)
    torch.testing.assert_close(w.detach(), expected, rtol=1e-6, atol=0)


def test_the_sgd_update_steps_as_torchs_sgd_does_bit_for_bit():
    torch.manual_seed(0)
    ours = GPT(ModelConfig(n_layer=1, d_model=16, n_head=2, d_ff=32, context=8, dropout=0.0))
    theirs = GPT(ModelConfig(n_layer=1, d_model=16, n_head=2, d_ff=32, context=8, dropout=0.0))
    theirs.load_state_dict(ours.state_dict())
    sgd, reference = SGD(list(ours.parameters()), lr=0.37), torch.optim.SGD(theirs.parameters(), lr=0.37)
    for _ in range(3):
        chunk = torch.randint(0, 256, (4, 9))
        for model in (ours, theirs):
            model.zero_grad(set_to_none=True)
            model(chunk[:, :-1], chunk[:, 1:])[1].backward()
        sgd.step()
        reference.step()
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters(), strict=True))


@pytest.mark.parametrize("optimizer", ["rms", "sgd"])
def test_dynamic_evaluation_does_not_import_torch_dynamo(optimizer):
    """Building a torch optimizer imports torch._dynamo: a second and more of every command that scores or
    compresses with dynamic evaluation (the quickstart's rms, the classic's sgd)."""
    import subprocess
    import sys

    code = f"""
import sys, torch
from chargpt.evaluation.config import DynamicEvalConfig
from chargpt.evaluation.scoring import dynamic_score
from chargpt.model.config import ModelConfig
from chargpt.model.gpt import GPT
model = GPT(ModelConfig(n_layer=1, d_model=16, n_head=2, d_ff=32, context=8))
rms = {{name: torch.ones_like(p) for name, p in model.named_parameters()}}
dynamic_score(model, torch.randint(0, 256, (100,), dtype=torch.uint8), 8, DynamicEvalConfig(optimizer={optimizer!r}),
              rms=rms)
print("torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_gradient_rms_is_the_rms_of_the_models_gradients_over_its_batches_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, d_model=16, n_head=2, d_ff=32, context=8, dropout=0.5))
    train = torch.randint(0, 256, (500,), dtype=torch.uint8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rms = gradient_rms(model, train, torch.device("cpu"))
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert rms.keys() == dict(model.named_parameters()).keys()
    # by hand: the same batches (the generator seeded 0), each gradient without dropout, squared and averaged
    gen, squares = torch.Generator().manual_seed(0), torch.zeros_like(model.head.weight)
    model.eval()
    for _ in range(RMS_BATCHES):
        chunk = train[torch.randint(500 - 9, (16, 1), generator=gen) + torch.arange(9)].long()
        (grad,) = torch.autograd.grad(model(chunk[:, :-1], chunk[:, 1:])[1], [model.head.weight])
        squares += grad.square() / RMS_BATCHES
    torch.testing.assert_close(rms["head.weight"], squares.sqrt())
    assert torch.equal(gradient_rms(model, train, torch.device("cpu"))["head.weight"], rms["head.weight"])
