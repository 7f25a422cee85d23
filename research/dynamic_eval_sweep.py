"""Dynamic evaluation settings, tried on a trained model: tune them on val, report the chosen ones on test.

    python research/dynamic_eval_sweep.py --checkpoint models/quickstart/model.pt --split data/processed/val.bin \
        --try '{"optimizer": "sgd", "lr": 0.03, "stride": 64}' [--try ...] [--mixture '{"order": 12}'] --out sweep.jsonl

Krause et al.'s update ({"optimizer": "rms", "lr": 1.5e-4, "decay": 1e-2}) uses the RMS of the training gradients
that the train stage stores in the model file.

Each --try is an eval.dynamic setting (JSON); one JSON line per setting goes to --out (appended) and to the
terminal: the setting, the split, its dynamic BPC, the static BPC of the same split, and the seconds taken. With
--mixture (an eval.mixture setting), each also mixed with the context model (bpc_dynamic_mixed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from chargpt.data.batches import load_split
from chargpt.evaluation.config import DynamicEvalConfig, MixtureConfig
from chargpt.evaluation.scoring import dynamic_score, split_score
from chargpt.train.checkpoint import needed_rms
from chargpt.use.inference import file_sha256, load_adaptable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True, help="a split file (flat bytes)")
    parser.add_argument("--try", dest="settings", action="append", required=True, metavar="JSON")
    parser.add_argument("--mixture", metavar="JSON", help="an eval.mixture setting: report the mixed BPC too")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    (model, stored_rms), data = load_adaptable(args.checkpoint), load_split(args.split)
    mixture = MixtureConfig(**json.loads(args.mixture)) if args.mixture else None
    static = split_score(model, data, model.cfg.context, 64)
    for text in args.settings:
        settings = DynamicEvalConfig(**json.loads(text))
        start = time.perf_counter()
        rms = needed_rms(args.checkpoint, stored_rms, settings.optimizer)
        score = dynamic_score(model, data, model.cfg.context, settings, mixture=mixture, rms=rms)
        row = {
            "split": str(args.split),
            "model_sha256": file_sha256(args.checkpoint),
            "dynamic": settings.model_dump(),
            "bpc_dynamic": score.bpc,
            "bpc_static": static.bpc,
            **({"mixture": mixture.model_dump(), "bpc_dynamic_mixed": score.mixed.bpc} if mixture else {}),
            "accuracy_dynamic": score.accuracy,
            "accuracy_static": static.accuracy,
            "bytes": score.bytes_scored,
            "seconds": round(time.perf_counter() - start, 1),
            "threads": torch.get_num_threads(),
        }
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
