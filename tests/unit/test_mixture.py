"""The network mixed with a context model (chargpt.evaluation.mixture): distributions that sum to 1, and scores
of the past that the future cannot change."""

import math

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL

from chargpt.evaluation.config import DynamicEvalConfig, MixtureConfig
from chargpt.evaluation.mixture import ContextModel, Mixture, SharedContext
from chargpt.evaluation.scoring import dynamic_score, scores_in_one_walk, split_score
from chargpt.model.config import ModelConfig
from chargpt.model.gpt import GPT

TEXT = b"<page><title>Anarchism</title><text>Anarchism is a political philosophy. " * 6 + bytes(range(256))


def network_rows(n: int, seed: int = 0) -> np.ndarray:
    """(n, 256) distributions of a made-up network: random, but each sums to 1."""
    logits = torch.randn(n, 256, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2
    return torch.softmax(logits, dim=-1).numpy()


def per_byte_nats(text: bytes, settings: MixtureConfig, network: np.ndarray) -> list[float]:
    mixture = Mixture(settings, first=text[0])
    nats = []
    for row, byte in zip(network, text[1:]):
        nats.append(-math.log(mixture.predict(row)[byte]))
        mixture.learn(byte)
    return nats


@pytest.mark.parametrize("order, table_bits", [(0, 10), (3, 10), (12, 16)])  # 10 bits: pairs take slots over
def test_every_distribution_sums_to_one_over_the_256_bytes(order, table_bits):
    settings = MixtureConfig(order=order, table_bits=table_bits)
    context, mixture = ContextModel(order, table_bits), Mixture(settings, first=TEXT[0])
    for row, byte in zip(network_rows(len(TEXT) - 1), TEXT[1:]):
        p, seen = context.predict()
        q = mixture.predict(row)
        assert p.shape == q.shape == (256,) and 0 <= seen <= order + 1
        assert p.sum() == pytest.approx(1, abs=1e-12) and q.sum() == pytest.approx(1, abs=1e-12)
        assert p.min() > 0 and q.min() > 0  # every byte stays codable
        context.observe(byte)
        mixture.learn(byte)


def test_changing_only_future_bytes_leaves_the_score_of_the_past_as_it_was():
    settings = MixtureConfig(order=6, table_bits=12)
    network = network_rows(len(TEXT) - 1)
    cut = 300
    future = TEXT[:cut] + bytes(255 - b for b in TEXT[cut:])
    before, after = per_byte_nats(TEXT, settings, network), per_byte_nats(future, settings, network)
    assert before[: cut - 1] == after[: cut - 1]  # bytes 1 .. cut-1: scored before anything saw byte cut
    assert before[cut - 1 :] != after[cut - 1 :]


def test_the_context_model_learns_what_the_text_repeats_and_the_mixture_follows_it():
    settings = MixtureConfig(order=8)
    rng = np.random.default_rng(0)
    block = bytes(rng.integers(0, 256, 400, dtype=np.uint8))
    text = block * 3
    uniform = np.full((len(text) - 1, 256), 1 / 256)
    nats = per_byte_nats(text, settings, uniform)
    first, third = sum(nats[:399]) / 399, sum(nats[800:]) / len(nats[800:])
    assert 8 <= first / math.log(2) < 8.25  # nothing to learn from yet: about the network's 8 bits
    assert third / math.log(2) < 0.5  # a repeat the context model has counted twice


def test_scoring_mixes_the_scored_bytes_in_the_texts_order():
    """split_score's and dynamic_score's mixed figure is the mixture's score of the network's own distributions,
    byte by byte in order: the same figure as feeding them to a Mixture directly."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(**TINY_MODEL)).eval()
    context = model.cfg.context
    data = torch.frombuffer(bytearray(TEXT[: 1 + (len(TEXT) - 1) // context * context]), dtype=torch.uint8)
    settings = MixtureConfig(order=4, table_bits=12)
    with torch.no_grad():  # consecutive windows: byte j + 1 from the bytes before it in its window
        logits = torch.cat([model(data[None, s : s + context].long())[0][0] for s in range(0, len(data) - 1, context)])
    nats, correct = Mixture(settings, first=TEXT[0]).score(logits, data[1:].long())
    score = split_score(model, data, context, 4, mixture=settings)
    assert score.mixed.bpc == pytest.approx(nats / math.log(2) / (len(data) - 1), rel=1e-9)
    assert score.mixed.accuracy == correct / (len(data) - 1)
    # dynamic evaluation at lr ~0 scores as the static model does, mixed too
    dynamic = dynamic_score(model, data, context, DynamicEvalConfig(optimizer="sgd", lr=1e-30), mixture=settings)
    assert dynamic.mixed.bpc == pytest.approx(score.mixed.bpc, rel=1e-6)


def test_one_walk_scores_static_and_dynamic_as_two_and_keeps_few_predictions(monkeypatch):
    """evaluate's walk of test: the static and the dynamic score, their mixtures reading one context model, are the
    figures split_score and dynamic_score give apart, bit for bit; and the predictions kept between the two mixtures
    are at most the largest step of either walk."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(**TINY_MODEL)).eval()
    context, stride, batch_size = model.cfg.context, 8, 4
    data = torch.frombuffer(bytearray(TEXT), dtype=torch.uint8)
    settings = MixtureConfig(order=4, table_bits=12)
    dynamic = DynamicEvalConfig(optimizer="sgd", lr=3e-3, stride=16, windows=2)
    apart = (split_score(model, data, context, batch_size, stride, mixture=settings),
             dynamic_score(model, data, context, dynamic, mixture=settings))  # fmt: skip
    kept = []
    predict = SharedContext.predict
    monkeypatch.setattr(SharedContext, "predict", lambda self, i: (kept.append(len(self.kept)), predict(self, i))[1])
    together = scores_in_one_walk(
        model, data, context, batch_size, stride, torch.device("cpu"), None, dynamic, settings, None
    )
    assert [score for score, _ in together] == list(apart)  # Score is a dataclass: every field, the mixed ones too
    assert apart[0].mixed.bpc != apart[1].mixed.bpc and all(seconds > 0 for _, seconds in together)
    assert 0 < max(kept) <= context + batch_size * stride  # the largest step: the first static batch


def test_the_weights_that_learn_are_those_of_the_orders_seen_and_each_sides_confidence():
    """After one byte, 'a', the empty context has seen it (1 order seen) and the context model gives it 1/2 + 1/512
    (Witten-Bell: 1 count, 1 distinct byte, the escape to uniform): its bucket is the second (0.4 < p <= 0.7). A
    network sure of a byte (0.95) is in its last bucket of five, a flat one (1/256) in its first: the weights learned
    are those of situation (1 x 5 + 4) x 4 + 1 = 37, and (1 x 5 + 0) x 4 + 1 = 21."""
    sure = np.full(256, 0.05 / 255)
    sure[ord("b")] = 0.95
    for network, situation in ((sure, 37), (np.full(256, 1 / 256), 21)):
        mixture = Mixture(MixtureConfig(order=4, table_bits=12, lr=0.5), first=ord("a"))
        q = mixture.predict(network)
        assert q.sum() == pytest.approx(1.0)
        mixture.learn(ord("b"))
        assert [i for i, logit in enumerate(mixture.logits) if logit != 0.0] == [situation]
