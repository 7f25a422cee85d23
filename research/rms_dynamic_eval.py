"""Krause et al.'s (2018) RMS-normalised dynamic evaluation, tried against the SGD update that eval.dynamic has.

    python research/rms_dynamic_eval.py --checkpoint models/quickstart/model.pt --split data/processed/val.bin \
        --train data/processed/train.bin --try '{"lr": 3e-4, "decay": 1e-3}' [--try ...] --out sweep.jsonl

The mean squared gradient of each weight (MS) is measured once at the trained weights on --batches batches of the
training split; each update then moves a weight by lr x its gradient / (sqrt(MS) + 0.1 mean(sqrt(MS))), and pulls
it back towards the trained value by decay x sqrt(MS) / mean(sqrt(MS)) (at most all the way): weights whose
gradients are large in training adapt less per unit of gradient and forget faster. Windows and groups as
eval.dynamic's (--stride, --windows). One JSON line per setting to the terminal and --out (appended): the setting,
the split, its BPC (alone and, with --mixture, mixed with the context model), and the seconds taken.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from chargpt.data.batches import load_split
from chargpt.evaluation.config import DynamicEvalConfig, MixtureConfig
from chargpt.evaluation.mixture import Mixture
from chargpt.evaluation.scoring import (
    DynamicEvaluation,
    Score,
    batch_totals,
    window_batches,
    window_length,
    window_plan,
)
from chargpt.use.inference import file_sha256, load_trained


def mean_squared_gradients(model, train: torch.Tensor, batches: int, batch_size: int = 16) -> list[torch.Tensor]:
    """Each parameter's mean squared gradient over `batches` random batches of the training split."""
    context, generator = model.cfg.context, torch.Generator().manual_seed(0)
    squares = [torch.zeros_like(p) for p in model.parameters()]
    for _ in range(batches):
        starts = torch.randint(len(train) - context - 1, (batch_size, 1), generator=generator)
        chunk = train[starts + torch.arange(context + 1)].long()
        model.zero_grad(set_to_none=True)
        model(chunk[:, :-1], chunk[:, 1:])[1].backward()
        for s, p in zip(squares, model.parameters()):
            s += p.grad.square() / batches
    model.zero_grad(set_to_none=True)
    return squares


class RMSDynamicEvaluation(DynamicEvaluation):
    """DynamicEvaluation with Krause et al.'s RMS-normalised step and decay in place of the optimizer's."""

    def __init__(self, model, settings: DynamicEvalConfig, squares: list[torch.Tensor], lr: float, decay: float):
        super().__init__(model, settings)
        self.initial = [p.detach().clone() for p in self.model.parameters()]
        rms = [s.sqrt() for s in squares]
        mean = torch.cat([r.flatten() for r in rms]).mean()
        # + 0.1 mean: a weight no training batch moved (a rare byte's embedding) must not take a step of 1/eps
        self.scale = [1 / (r + 0.1 * mean) for r in rms]
        self.pull = [(decay * r / mean).clamp(max=1.0) for r in rms]
        self.lr = lr

    def update(self, chunk: torch.Tensor, scored: torch.Tensor | None = None) -> None:
        with torch.enable_grad():
            logits, _ = self.model(chunk[:, :-1])
            nats = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), chunk[:, 1:], reduction="none")
            (nats[scored].mean() if scored is not None else nats.mean()).backward()
        with torch.no_grad():
            for p, p0, scale, pull in zip(self.model.parameters(), self.initial, self.scale, self.pull):
                p -= self.lr * p.grad * scale
                p += pull * (p0 - p)
        self.model.zero_grad(set_to_none=True)


def rms_dynamic_score(model, data, settings, squares, lr, decay, mixture) -> Score:
    """dynamic_score's walk (chargpt.evaluation.scoring) with the RMS-normalised update."""
    context = model.cfg.context
    plan, T = window_plan(len(data), context, settings.stride or context), window_length(len(data), context)
    learner = RMSDynamicEvaluation(model, settings, squares, lr, decay)
    mixer = Mixture(mixture, first=int(data[0])) if mixture else None
    totals = torch.zeros(4 if mixer else 2, dtype=torch.float64)
    for chunk, scored in window_batches(data, plan, T, settings.windows, torch.device("cpu")):
        with torch.no_grad():
            totals += batch_totals(learner.model, chunk, scored, None, mixer)
        learner.update(chunk, scored)
    return Score.from_totals(totals, len(data) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--train", type=Path, required=True, help="the training split, for the mean squared gradients")
    parser.add_argument("--batches", type=int, default=32)
    parser.add_argument("--stride", type=int, default=64)
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--try", dest="settings", action="append", required=True, metavar="JSON")
    parser.add_argument("--mixture", metavar="JSON", help="an eval.mixture setting: report the mixed BPC too")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model, data = load_trained(args.checkpoint), load_split(args.split)
    squares = mean_squared_gradients(model, load_split(args.train), args.batches)
    windows = DynamicEvalConfig(optimizer="sgd", lr=1.0, stride=args.stride, windows=args.windows)
    mixture = MixtureConfig(**json.loads(args.mixture)) if args.mixture else None
    for text in args.settings:
        setting = json.loads(text)
        start = time.perf_counter()
        score = rms_dynamic_score(model, data, windows, squares, setting["lr"], setting.get("decay", 0.0), mixture)
        row = {
            "split": str(args.split),
            "model_sha256": file_sha256(args.checkpoint),
            "update": "rms",
            "rms": setting,
            "stride": args.stride,
            "windows": args.windows,
            "batches": args.batches,
            "bpc_dynamic": score.bpc,
            **({"mixture": mixture.model_dump(), "bpc_dynamic_mixed": score.mixed.bpc} if mixture else {}),
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
