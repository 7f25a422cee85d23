"""The network mixed with a context model of the text it is scoring (eval.mixture).

The network knows English from training; the context model knows only this text, from the bytes already scored:
how often each byte followed each of the last 0..order bytes. They make different mistakes (a name, a markup
pattern, a table row the network cannot hold in its 128-byte window, the context model has counted), so a
mixture of the two scores better than either, as compressors of the paq family mix their predictors.

- The context model (`ContextModel`) interpolates its counts from the longest context to the empty one by Witten
  and Bell's rule, over a uniform base: a context seen n times with u distinct successors gives its own counts
  the weight n / (n + u) and the shorter context the rest. Its counts live in one hashed table of fixed size
  (2^table_bits slots, 4 bytes each), whatever the text's length; a slot holds the count of one (context, byte)
  pair and a 16-bit check of the context, and a pair that lands on another's slot takes it over.
- The mixture (`Mixture`) is linear, q = a p_network + (1 - a) p_context, so it sums to 1 over the 256 bytes as
  both parts do. Its weights are a softmax over two logits, one pair for each situation: how many of the context
  model's orders have seen their context (how much the counts know here), and how confident each side is (the
  bucket of its top probability: a sure network and an unsure context model call for other weights than the
  reverse). They are learned online by one gradient step on -log q of each byte after it is scored.

Every byte is scored before anything learns from it: `predict` reads only the bytes already given to `learn` or
`observe`. So a compressor and its decompressor, which see the same bytes in the same order, compute the same
floats (chargpt.use.compression).
"""

from __future__ import annotations

import math
from bisect import bisect_left

import numpy as np
import torch

from chargpt.evaluation.config import MixtureConfig

# The buckets of each side's top probability that pick the mixture's weights (docs/results.md, "The mixer's
# weights by confidence": these beat the orders seen alone on val and on test)
NETWORK_EDGES = (0.3, 0.5, 0.7, 0.9)
CONTEXT_EDGES = (0.4, 0.7, 0.9)
HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd: hashes of contexts, then of the hashes into slots
CHECK_SHIFT, CHECK_MASK = np.uint64(16), np.uint64(0xFFFF)


class ContextModel:
    """Counts of the byte after each context of 0..order bytes, in a hashed table (see the module's docstring)."""

    def __init__(self, order: int, table_bits: int):
        slots = (1 << table_bits) + 255  # a context's 256 pairs side by side (for the cache), never wrapping
        self.counts = np.zeros(slots, dtype=np.uint16)
        self.checks = np.zeros(slots, dtype=np.uint16)
        self._count_rows = np.lib.stride_tricks.sliding_window_view(self.counts, 256)  # row s: slots s .. s + 255
        self._check_rows = np.lib.stride_tricks.sliding_window_view(self.checks, 256)
        self._shift = np.uint64(64 - table_bits)
        self._orders = np.arange(1, order + 1, dtype=np.uint64)
        self._hashes = np.zeros(order + 1, dtype=np.uint64)  # of the last 0..order bytes; order 0: the empty one
        self._escapes_above = np.ones(order + 1)  # 1, then the escapes of orders order .. 1 (predict's)
        self._place()

    def _place(self) -> None:
        mixed = self._hashes * HASH_MULTIPLIER
        self._bases = (mixed >> self._shift).astype(np.intp)  # (orders,): the first slot of each context's row
        self._context_checks = ((mixed >> CHECK_SHIFT) & CHECK_MASK).astype(np.uint16)[:, None]  # (orders, 1)

    def predict(self) -> tuple[np.ndarray, int]:
        """(256,) float64 summing to 1: the next byte's distribution; and how many orders have seen their context."""
        found = self._check_rows[self._bases] == self._context_checks  # (orders, 256)
        held = np.where(found, self._count_rows[self._bases], 0)  # (orders, 256) uint16
        counts = held.astype(np.float64)
        n = counts.sum(axis=1)  # (orders,)
        u = (held != 0).sum(axis=1)
        total = np.maximum(n + u, 1)
        escape = np.where(n > 0, u / total, 1.0)  # the weight each order leaves to the shorter ones
        # Witten-Bell from the empty context up: p_k = counts_k / (n_k + u_k) + escape_k p_(k-1), unrolled: each
        # order's share is the product of the escapes of the orders above it.
        self._escapes_above[1:] = escape[:0:-1]
        above = np.cumprod(self._escapes_above)[::-1]  # (orders,)
        p = (above / total) @ counts + above[0] * escape[0] / 256
        return p, int(np.count_nonzero(n))

    def observe(self, byte: int) -> None:
        """Count `byte` after each current context, then move on to the next position."""
        slots = self._bases + byte
        checks = self._context_checks[:, 0]
        held = self.checks[slots] == checks  # else another pair held the slot: this one takes it over
        self.counts[slots] = np.where(held, np.minimum(self.counts[slots], 65534), 0) + 1
        self.checks[slots] = checks
        # the context of k + 1 bytes at the next position: the byte after the context of k bytes here
        self._hashes[1:] = ((self._hashes[:-1] ^ np.uint64(byte)) + self._orders) * HASH_MULTIPLIER
        self._place()


class SharedContext:
    """One ContextModel of a text that several mixtures read in the text's order (evaluate mixes both its static and
    its dynamic scores of test): each prediction is made once, by the first reader to reach it, and kept until the
    last has read it. Readers that advance in step (chargpt.evaluation.scoring.in_step) keep few."""

    def __init__(self, settings: MixtureConfig, readers: int):
        self.model = ContextModel(settings.order, settings.table_bits)
        self.readers = readers
        self.observed = 0  # bytes the model has counted
        self.kept: dict[int, list] = {}  # bytes counted before it -> [prediction, readers yet to read it]

    def reader(self) -> ContextReader:
        return ContextReader(self)

    def predict(self, position: int) -> tuple[np.ndarray, int]:
        if position not in self.kept:  # the first reader here: the model has counted exactly `position` bytes
            assert position == self.observed, (position, self.observed)
            self.kept[position] = [self.model.predict(), self.readers]
        entry = self.kept[position]
        entry[1] -= 1
        if entry[1] == 0:
            del self.kept[position]
        return entry[0]

    def observe(self, position: int, byte: int) -> None:
        if position == self.observed:  # the first reader past it counts it; the others have its counts already
            self.model.observe(byte)
            self.observed += 1


class ContextReader:
    """A ContextModel's `predict` and `observe`, read from a SharedContext at this reader's own position."""

    def __init__(self, shared: SharedContext):
        self.shared, self.position = shared, 0

    def predict(self) -> tuple[np.ndarray, int]:
        return self.shared.predict(self.position)

    def observe(self, byte: int) -> None:
        self.shared.observe(self.position, byte)
        self.position += 1


def situation_index(seen: int, network_top: float, context_top: float) -> int:
    """Which of the mixture's weights apply: the orders seen, then the buckets of each side's top probability."""
    network = bisect_left(NETWORK_EDGES, network_top)
    context = bisect_left(CONTEXT_EDGES, context_top)
    return (seen * (len(NETWORK_EDGES) + 1) + network) * (len(CONTEXT_EDGES) + 1) + context


class Mixture:
    """The network's next-byte distribution mixed with a ContextModel's (see the module's docstring); `context`: a
    SharedContext's reader, where another mixture scores the same text."""

    def __init__(self, settings: MixtureConfig, first: int | None = None, context: ContextReader | None = None):
        self.context = context or ContextModel(settings.order, settings.table_bits)
        self.lr = settings.lr
        # per situation (orders seen, the network's bucket, the context model's): the context model's logit over
        # the network's
        self.logits = [0.0] * ((settings.order + 2) * (len(NETWORK_EDGES) + 1) * (len(CONTEXT_EDGES) + 1))
        self._pending: tuple | None = None
        if first is not None:  # a text's first byte is stored, not scored: only counted
            self.context.observe(first)

    def predict(self, network: np.ndarray) -> np.ndarray:
        """(256,) float64: the mixed distribution of the next byte, given the network's (256,) distribution."""
        context, seen = self.context.predict()
        situation = situation_index(seen, float(network.max()), float(context.max()))
        a = 1 / (1 + math.exp(self.logits[situation]))  # the network's weight
        self._pending = (network, context, situation, a)
        return a * network + (1 - a) * context

    def learn(self, byte: int) -> None:
        """After `predict`: one gradient step of the weights on -log q(byte), and the byte counted."""
        network, context, situation, a = self._pending
        p_network, p_context = float(network[byte]), float(context[byte])
        q = a * p_network + (1 - a) * p_context
        self.logits[situation] -= self.lr * a * (1 - a) * (p_network - p_context) / q  # d(-log q)/d logit
        self.context.observe(byte)
        self._pending = None

    def score(self, network: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
        """Nats and correct top-1 predictions of the mixture over consecutive bytes `targets` (m,), whose network
        logits are `network` (m, 256): each byte scored, then learned from."""
        probabilities = torch.softmax(network.double(), dim=-1).cpu().numpy()
        nats, correct = 0.0, 0
        for row, byte in zip(probabilities, targets.tolist()):
            q = self.predict(row)
            nats -= float(np.log(q[byte]))
            correct += int(q.argmax() == byte)
            self.learn(byte)
        return nats, correct
