"""Mixture settings (eval.mixture), tried on a trained model's static scores: tune them on val, report on test.

    python research/mixture_sweep.py --checkpoint models/quickstart/model.pt --split data/processed/val.bin \
        --stride 32 --try '{"order": 12}' [--try ...] --out sweep.jsonl

The model scores the split once (fp32, windows of --stride as `chargpt score`); each --try then mixes those same
distributions with a context model of the split (chargpt.evaluation.mixture). One JSON line per setting goes to --out
(appended) and to the terminal: the setting, the split, the static BPC, the mixed BPC, the context model's BPC
alone (its own Witten-Bell estimate, no network), and the seconds the mixing took.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from chargpt.data.batches import load_split
from chargpt.evaluation.config import MixtureConfig
from chargpt.evaluation.mixture import ContextModel, Mixture
from chargpt.evaluation.scoring import window_batches, window_length, window_plan
from chargpt.use.inference import file_sha256, load_trained


@torch.inference_mode()
def scored_logits(model, data: torch.Tensor, stride: int) -> torch.Tensor:
    """(n - 1, 256): the model's logits for bytes 1 .. n-1 in order, each from the bytes before it in its window."""
    context = model.cfg.context
    plan, T = window_plan(len(data), context, stride), window_length(len(data), context)
    rows = [model(chunk[:, :-1])[0][scored] for chunk, scored in window_batches(data, plan, T, 64, torch.device("cpu"))]
    return torch.cat(rows)


def context_model_bits(data: bytes, settings: MixtureConfig) -> float:
    """Bits per byte of the context model alone over bytes 1 .. n-1."""
    model, nats = ContextModel(settings.order, settings.table_bits), 0.0
    model.observe(data[0])
    for byte in data[1:]:
        nats -= math.log(model.predict()[0][byte])
        model.observe(byte)
    return nats / math.log(2) / (len(data) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True, help="a split file (flat bytes)")
    parser.add_argument("--stride", type=int, help="sliding windows (default: consecutive windows of the context)")
    parser.add_argument("--try", dest="settings", action="append", required=True, metavar="JSON")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model, data = load_trained(args.checkpoint), load_split(args.split)
    logits = scored_logits(model, data, args.stride or model.cfg.context)
    targets = data[1:].long()
    static = torch.nn.functional.cross_entropy(logits.double(), targets).item() / math.log(2)
    for text in args.settings:
        settings = MixtureConfig(**json.loads(text))
        start = time.perf_counter()
        nats, correct = Mixture(settings, first=int(data[0])).score(logits, targets)
        seconds = time.perf_counter() - start
        row = {
            "split": str(args.split),
            "model_sha256": file_sha256(args.checkpoint),
            "stride": args.stride or model.cfg.context,
            "mixture": settings.model_dump(),
            "bpc_static": static,
            "bpc_mixed": nats / math.log(2) / len(targets),
            "accuracy_mixed": correct / len(targets),
            "bpc_context_model": context_model_bits(bytes(data.numpy()), settings),
            "seconds": round(seconds, 1),
        }
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
