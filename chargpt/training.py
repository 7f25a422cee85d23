"""The pieces of one training run, built from its config, and the outputs a finished run writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chargpt.config import RunConfig
from chargpt.data import BatchSampler, load_split
from chargpt.evaluation import split_bpc
from chargpt.io import write_json, write_table
from chargpt.model import GPT
from chargpt.plots import plot_training_curve
from chargpt.schedule import build_onecycle, build_optimizer
from chargpt.trainer import LoopConfig, LoopState

CURVE_COLUMNS = ["step", "lr", "momentum", "train_loss", "val_probe_bpc"]


@dataclass
class TrainingRun:
    cfg: RunConfig
    device: torch.device
    autocast: torch.dtype | None
    lr_max: float
    model: GPT
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: BatchSampler
    val_probe: torch.Tensor  # a fixed val prefix, so that the points of a curve are comparable

    @classmethod
    def build(cls, cfg: RunConfig, device: torch.device, autocast: torch.dtype | None, lr_max: float,
              data_dir: Path) -> TrainingRun:
        model = GPT(cfg.model).to(device)
        optimizer = build_optimizer(model, cfg.optimizer, lr=cfg.schedule.lr_min, momentum=cfg.schedule.momentum_max)
        scheduler = build_onecycle(optimizer, cfg.schedule, lr_max, cfg.train.iterations)
        sampler = BatchSampler(load_split(data_dir / "train.bin"), cfg.model.context, cfg.train.batch_size,
                               cfg.train.seed, device)
        probe_bytes = cfg.train.eval_batches * cfg.train.batch_size * cfg.model.context + 1
        val_probe = load_split(data_dir / "val.bin")[:probe_bytes]
        return cls(cfg, device, autocast, lr_max, model, optimizer, scheduler, sampler, val_probe)

    @property
    def state_parts(self) -> dict[str, Any]:
        """What save_training_state / restore_training_state take."""
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler,
                "sampler_generator": self.sampler.generator, "config": self.cfg.model_dump(mode="json")}

    def loop_config(self) -> LoopConfig:
        t = self.cfg.train
        return LoopConfig(t.iterations, t.log_interval, t.eval_interval, t.checkpoint_every,
                          self.cfg.optimizer.grad_clip, self.autocast, check_every_step=self.device.type == "cpu")

    def probe(self) -> dict[str, float]:
        bpc, _ = split_bpc(self.model, self.val_probe, self.cfg.model.context, self.cfg.eval.batch_size,
                           device=self.device, autocast_dtype=self.autocast)
        return {"val_probe_bpc": bpc}

    def params(self) -> dict[str, Any]:
        from chargpt.tracking import flatten

        return flatten(self.cfg.model_dump(mode="json", exclude={"name"})) | {
            "resolved.lr_max": self.lr_max, "resolved.precision": str(self.autocast or "fp32"),
            "model.n_params": self.model.num_params(), "train.val_probe_bytes": len(self.val_probe)}


def write_outputs(run: TrainingRun, curve: list[dict], result: LoopState, reports: Path) -> dict[str, float]:
    """The curve (TSV + PNG) and the metrics JSON of a finished run; returns the metrics."""
    write_table(reports / "train_curve.tsv", CURVE_COLUMNS, [[r.get(c, "") for c in CURVE_COLUMNS] for r in curve],
                delimiter="\t")
    plot_training_curve(curve, reports / "train_curve.png", f"training: {run.cfg.name}")
    metrics = {"val_probe_bpc": curve[-1]["val_probe_bpc"], "iterations": result.step, "tokens": result.tokens,
               "train_seconds": round(result.seconds, 2), "tokens_per_second": round(result.tokens / result.seconds, 1),
               "lr_max": run.lr_max}
    write_json(reports / "train_metrics.json", metrics)
    return metrics
