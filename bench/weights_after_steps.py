"""A short sha256 of each named run's weights after N training steps here (CPU, fp32, a fixed LR peak), to check
that a change leaves the runs that predate it bit for bit as they were: run it before and after the change.

    python bench/weights_after_steps.py quickstart_classic quickstart_seed quickstart_adamw final t12 [--steps 100]

Runs whose context exceeds 128 (the seed's scale) train one layer at batch 4: the same code at CPU size. It trains
through the train stage's own function, in a scratch directory that holds data/processed's splits.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: the stage scripts under stages/


def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(weights.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data-dir", default="data/processed")
    args = parser.parse_args()
    os.environ.update({"CHARGPT_TRACKING": "off", "CHARGPT_MAX_HOURS": "0"})
    import stages.train
    from chargpt.pipeline.config import load_run_config, with_overrides
    from chargpt.pipeline.stage import model_path

    data, home = Path(args.data_dir).resolve(), Path.cwd()
    for run in args.runs:
        cfg = load_run_config(run, args.params)
        sets = [f"train.iterations={args.steps}", "schedule.lr_max=0.003", "train.precision=fp32",
                "train.eval_interval=50", "train.checkpoint_every=0"]  # fmt: skip
        if cfg.model.context > 128:
            sets += ["model.n_layer=1", "train.batch_size=4"]
        cfg = with_overrides(cfg, sets)
        with tempfile.TemporaryDirectory() as scratch:
            (Path(scratch) / "data").mkdir()
            (Path(scratch) / "data/processed").symlink_to(data, target_is_directory=True)
            os.chdir(scratch)
            try:
                stages.train.train(cfg)
                trained = torch.load(model_path(cfg.name), weights_only=True)["model"]
            finally:
                os.chdir(home)
        print(run, weights_digest(trained), flush=True)


if __name__ == "__main__":
    main()
