"""Bits per byte and next-byte accuracy over a whole split.

Protocol: byte j of a split (j = 1 .. N-1) is predicted from the bytes before it within one window of at
most `context` bytes; every such byte is scored exactly once (byte 0 has no context and is not scored).
With stride = context the windows are consecutive and non-overlapping. With a smaller stride, each window
after the first advances by `stride` bytes and scores only its last `stride` bytes, so every byte past the
first window sees at least context - stride bytes of history (sliding-window evaluation). With stride 1 every
byte after the first window is predicted from the full context before it: the seed's protocol.

The accuracy is top-1: the share of the same scored bytes whose likeliest byte under the model is the true one.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Generator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from chargpt.device import autocast
from chargpt.errors import ConfigError
from chargpt.evaluation.config import MixtureConfig
from chargpt.evaluation.mixture import Mixture, SharedContext

LN2 = math.log(2)


def window_length(n: int, context: int) -> int:
    """T, the input length of every window over n bytes: the context, or all but the last byte of a shorter text."""
    return min(context, n - 1)


def check_stride(stride: int | None, context: int) -> None:
    if stride is not None and not 0 < stride <= context:
        raise ConfigError(f"stride {stride} must be between 1 and the model's context ({context})")


def window_plan(n: int, context: int, stride: int) -> list[tuple[int, int]]:
    """(input start, number of scored positions) per window; each input is data[start : start + T]
    with T = window_length(n, context), and scores its last positions."""
    if n < 2:
        raise ValueError(f"a split of {n} byte(s) has nothing to score")
    T = window_length(n, context)
    plan = [(0, T)]  # the first window scores all of its T targets (bytes 1..T)
    scored_end = T + 1  # exclusive: bytes [1, scored_end) are scored
    while scored_end < n:
        end = min(scored_end + stride, n)  # score bytes [scored_end, end)
        plan.append((end - 1 - T, end - scored_end))
        scored_end = end
    return plan


@dataclass(frozen=True)
class Score:
    """A model's score on a text under the window protocol above."""

    bpc: float  # bits per byte
    accuracy: float  # top-1 next-byte accuracy, over the same bytes
    bytes_scored: int
    mixed: Score | None = None  # the same bytes, the model mixed with a context model of the text (eval.mixture)

    @classmethod
    def from_totals(cls, totals: torch.Tensor, n_bytes: int) -> Score:
        """From batch_totals summed over a text: (nats, correct predictions) over its n_bytes scored bytes, and the
        mixture's two after them where it scored too."""
        nats, correct, *mixed = totals.tolist()
        return cls(nats / (n_bytes * LN2), correct / n_bytes, n_bytes,
                   cls(mixed[0] / (n_bytes * LN2), mixed[1] / n_bytes, n_bytes) if mixed else None)  # fmt: skip


def batch_totals(
    model: torch.nn.Module,
    chunk: torch.Tensor,
    scored: torch.Tensor,
    amp_dtype: torch.dtype | None,
    mixture: Mixture | None = None,
) -> torch.Tensor:
    """(2,) float64: the summed nats, and the count of bytes the model's top-1 prediction gets right, over the scored
    positions of one batch of windows: chunk (B, T+1) holds the inputs and their next bytes, `scored` (B, T) marks
    the positions each window scores. With `mixture`, (4,): the same two for the mixture after them (the batches
    must come in the text's order, and each window's scored bytes follow the one's before it)."""
    with autocast(chunk.device, amp_dtype):
        logits, _ = model(chunk[:, :-1])  # (B, T, vocab)
    targets = chunk[:, 1:]
    # float64: over millions of bytes the BPC must not drift by fp32 rounding (a uniform model scores 8.0)
    nats = F.cross_entropy(logits.double().transpose(1, 2), targets, reduction="none")  # (B, T)
    correct = (logits.argmax(dim=-1) == targets) & scored  # (B, T)
    totals = [torch.where(scored, nats, 0.0).sum(dtype=torch.float64), correct.sum(dtype=torch.float64)]
    if mixture is not None:  # logits[scored]: (m, vocab), the scored bytes in the text's order
        totals += [torch.tensor(t, dtype=torch.float64, device=chunk.device) for t in
                   mixture.score(logits[scored], targets[scored])]  # fmt: skip
    return torch.stack(totals)


def scored_mask(T: int, n_scored: torch.Tensor) -> torch.Tensor:
    """(B, T): the last n_scored[b] positions of each window, the ones it scores."""
    return torch.arange(T)[None, :] >= (T - n_scored)[:, None]


def scored_so_far(plan: list[tuple[int, int]], size: int) -> itertools.accumulate:
    """The bytes scored once each batch of `size` windows of `plan` is (from the plan: no read of a device tensor)."""
    return itertools.accumulate(sum(k for _, k in plan[i : i + size]) for i in range(0, len(plan), size))


def window_batches(data: torch.Tensor, plan: list[tuple[int, int]], T: int, size: int, device: torch.device):
    """The windows of `plan` (window_plan's, of length T) in order, `size` at a time: (chunk (B, T+1), the inputs and
    their next bytes; scored (B, T))."""
    offsets = torch.arange(T + 1)
    for i in range(0, len(plan), size):
        starts = torch.tensor([s for s, _ in plan[i : i + size]])
        n_scored = torch.tensor([k for _, k in plan[i : i + size]])
        yield data[starts[:, None] + offsets].long().to(device), scored_mask(T, n_scored).to(device)


def split_score(
    model: torch.nn.Module,
    data: torch.Tensor,
    context: int,
    batch_size: int,
    stride: int | None = None,
    device: torch.device = torch.device("cpu"),
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
    mixture: MixtureConfig | None = None,
) -> Score:
    """The score of `model` (plain or torch.compile'd) on the flat uint8 tensor `data`; with `mixture`, its
    score mixed with a context model too (Score.mixed)."""
    return scores_in_one_walk(
        model, data, context, batch_size, stride, device, amp_dtype, None, mixture, None, progress
    )[0][0]


@torch.inference_mode()
def static_pass(
    model: torch.nn.Module,
    data: torch.Tensor,
    context: int,
    batch_size: int,
    stride: int | None,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    mixer: Mixture | None,
) -> Generator[int, None, Score]:
    """split_score's work, one batch of windows a step: yields the bytes scored so far, returns the Score."""
    plan = window_plan(len(data), context, stride or context)
    T = window_length(len(data), context)
    was_training = model.training
    model.eval()
    totals = torch.zeros(4 if mixer else 2, dtype=torch.float64, device=device)
    for (chunk, scored), done in zip(
        window_batches(data, plan, T, batch_size, device), scored_so_far(plan, batch_size)
    ):
        totals += batch_totals(model, chunk, scored, amp_dtype, mixer)
        yield done
    model.train(was_training)
    return Score.from_totals(totals, len(data) - 1)


def in_step(
    passes: list[Generator[int, None, Score]], n_bytes: int, desc: str, progress: bool
) -> list[tuple[Score, float]]:
    """Each pass over one text of n_bytes scored bytes (a generator of the bytes it has scored so far, returning its
    Score) run to its end, the one furthest behind stepped first, so that mixtures reading one SharedContext keep
    only the predictions between them; each pass's Score, and the seconds spent in its own steps."""
    done, seconds, scores = [0] * len(passes), [0.0] * len(passes), [None] * len(passes)
    with tqdm(total=n_bytes, desc=desc, disable=not progress, mininterval=1.0, unit="B", unit_scale=True) as bar:
        while live := [i for i, score in enumerate(scores) if score is None]:
            i = min(live, key=done.__getitem__)
            start = time.perf_counter()
            try:
                done[i] = next(passes[i])
            except StopIteration as end:
                scores[i] = end.value
            seconds[i] += time.perf_counter() - start
            bar.update(min(done) - bar.n)
    return list(zip(scores, seconds))


# The RMS of the training gradients that the train stage stores in the model file (dynamic_rms): Krause et al.
# measure it once at the trained weights, over a sample of the training split.
RMS_BATCHES, RMS_BATCH_SIZE = 32, 16


def gradient_rms(model: torch.nn.Module, train: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    """{parameter name: the RMS of its gradient} over RMS_BATCHES random batches of windows of the flat uint8
    training split, at the model's weights, in fp32 and without dropout (as dynamic evaluation runs it). On a copy:
    the model's own parameters may carry DistributedDataParallel's hooks."""
    model = copy.deepcopy(model).eval()
    context, generator = model.cfg.context, torch.Generator().manual_seed(0)
    params = dict(model.named_parameters())
    squares = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    for _ in range(RMS_BATCHES):
        starts = torch.randint(len(train) - context - 1, (RMS_BATCH_SIZE, 1), generator=generator)
        chunk = train[starts + torch.arange(context + 1)].long().to(device)  # (B, T+1)
        model.zero_grad(set_to_none=True)
        model(chunk[:, :-1], chunk[:, 1:])[1].backward()
        for name, p in params.items():
            squares[name] += p.grad.float().square() / RMS_BATCHES
    return {name: s.sqrt().cpu() for name, s in squares.items()}


class KrauseRMS:
    """Krause et al.'s update: each weight moves by lr x its gradient / (its training RMS + 0.1 x the mean RMS), then
    back towards its trained value by decay x its RMS / the mean RMS (at most all the way). Weights that training
    moved hard adapt less per unit of gradient and forget faster; the 0.1 x mean keeps a weight that no training
    batch moved (a rare byte's embedding) from a step of 1/0. Not a torch.optim.Optimizer: building one imports
    torch._dynamo, a second and more of every command that scores or compresses with dynamic evaluation."""

    def __init__(self, params: list[torch.nn.Parameter], rms: list[torch.Tensor], lr: float, decay: float):
        mean = torch.cat([r.flatten() for r in rms]).mean()
        rms = [r.to(p.device) for p, r in zip(params, rms)]
        self.params, self.lr = params, lr
        self.scale = [1 / (r + 0.1 * mean) for r in rms]
        self.pull = [(decay * r / mean).clamp(max=1.0) for r in rms]
        self.trained = [p.detach().clone() for p in params]

    @torch.no_grad()
    def step(self) -> None:
        for p, scale, pull, trained in zip(self.params, self.scale, self.pull, self.trained, strict=True):
            p -= self.lr * p.grad * scale
            p += pull * (trained - p)


class SGD:
    """Plain SGD, as torch.optim.SGD steps without momentum (bit for bit; tests/unit/test_evaluation.py), without
    the torch._dynamo import that building a torch optimizer costs (KrauseRMS says why that matters)."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float):
        self.params, self.lr = params, lr

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            p.add_(p.grad, alpha=-self.lr)


class DynamicEvaluation:
    """Krause et al.'s dynamic evaluation: a copy of the model that takes an optimizer step on each group of windows
    after they are scored. `update` is the one place the weights change, so that a compressor and its decompressor
    (chargpt.use.compression), which score the bytes their own way, adapt exactly as the scorer does. `rms`: the
    model file's dynamic_rms, which the rms update needs."""

    def __init__(self, model: torch.nn.Module, settings, rms: dict[str, torch.Tensor] | None = None):
        self.model = copy.deepcopy(model).eval()  # eval: no dropout; the trained model stays as it is
        names, params = zip(*self.model.named_parameters())
        self.settings = settings
        self.initial = [p.detach().clone() for p in params] if settings.decay and settings.optimizer != "rms" else None
        if settings.optimizer == "rms":
            if rms is None:
                raise ValueError("the rms update needs the model file's dynamic_rms (the training gradients' RMS)")
            self.optimizer = KrauseRMS(list(params), [rms[n] for n in names], settings.lr, settings.decay)
        elif settings.optimizer == "adam":
            self.optimizer = torch.optim.Adam(params, lr=settings.lr)
        else:
            self.optimizer = SGD(list(params), settings.lr)

    def update(self, chunk: torch.Tensor, scored: torch.Tensor | None = None) -> None:
        """One step on windows chunk (B, T+1) (inputs and their next bytes): on the positions `scored` (B, T) marks,
        the ones just scored (all of them where None)."""
        with torch.enable_grad():
            logits, loss = self.model(chunk[:, :-1], chunk[:, 1:])
            if scored is not None and not bool(scored.all()):
                nats = F.cross_entropy(logits.float().transpose(1, 2), chunk[:, 1:], reduction="none")
                loss = nats[scored].mean()
            loss.backward()
        self.optimizer.step()
        self.model.zero_grad(set_to_none=True)
        if self.initial is not None:
            with torch.no_grad():
                for p, p0 in zip(self.model.parameters(), self.initial):
                    p.lerp_(p0, self.settings.decay)


def dynamic_score(
    model: torch.nn.Module,
    data: torch.Tensor,
    context: int,
    settings,
    device: torch.device = torch.device("cpu"),
    progress: bool = False,
    mixture: MixtureConfig | None = None,
    rms: dict[str, torch.Tensor] | None = None,
) -> Score:
    """The score of `data` with dynamic evaluation: the windows of the static protocol (stride:
    settings.stride) in order, `settings.windows` at a time, each group scored before the model learns from the
    bytes it scored; with `mixture`, mixed with a context model too (Score.mixed). rms: as DynamicEvaluation's."""
    mixer = Mixture(mixture, first=int(data[0])) if mixture else None
    steps = dynamic_pass(model, data, context, settings, device, mixer, rms)
    return in_step([steps], len(data) - 1, "dynamic eval", progress)[0][0]


def dynamic_pass(
    model: torch.nn.Module,
    data: torch.Tensor,
    context: int,
    settings,
    device: torch.device,
    mixer: Mixture | None,
    rms: dict[str, torch.Tensor] | None,
) -> Generator[int, None, Score]:
    """dynamic_score's work, one group of windows a step: yields the bytes scored so far, returns the Score."""
    plan = window_plan(len(data), context, settings.stride or context)
    T = window_length(len(data), context)
    dynamic = DynamicEvaluation(model, settings, rms)
    totals = torch.zeros(4 if mixer else 2, dtype=torch.float64, device=device)
    groups = zip(window_batches(data, plan, T, settings.windows, device), scored_so_far(plan, settings.windows))
    for (chunk, scored), done in groups:
        with torch.no_grad():
            totals += batch_totals(dynamic.model, chunk, scored, None, mixer)
        dynamic.update(chunk, scored)
        yield done
    return Score.from_totals(totals, len(data) - 1)


def scores_in_one_walk(
    model: torch.nn.Module, data: torch.Tensor, context: int, batch_size: int, stride: int | None, device: torch.device,
    amp_dtype: torch.dtype | None, dynamic=None, mixture: MixtureConfig | None = None, rms: dict | None = None,
    progress: bool = False,
) -> list[tuple[Score, float]]:  # fmt: skip
    """split_score's (Score, seconds) of `data` and, with `dynamic` settings, dynamic_score's after it, in one walk:
    where both are mixed, their mixtures read one context model of the text (SharedContext), whose counts are then
    made once for both."""
    shared = SharedContext(mixture, readers=2) if mixture and dynamic else None

    def mixer() -> Mixture | None:
        return Mixture(mixture, first=int(data[0]), context=shared and shared.reader()) if mixture else None

    passes = [static_pass(model, data, context, batch_size, stride, device, amp_dtype, mixer())]
    if dynamic:
        passes.append(dynamic_pass(model, data, context, dynamic, device, mixer(), rms))
    return in_step(passes, len(data) - 1, "eval, static and dynamic" if dynamic else "eval", progress)
