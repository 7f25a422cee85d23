"""The pieces of one training run, built from its config, and the outputs a finished run writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chargpt.config import ConfigError, RunConfig
from chargpt.data import BatchSampler, load_split
from chargpt.distributed import Ranks
from chargpt.evaluation import split_bpc
from chargpt.io import write_json, write_table
from chargpt.model import GPT
from chargpt.plots import plot_training_curve
from chargpt.schedule import build_optimizer, build_scheduler
from chargpt.trainer import LoopConfig, LoopState

CURVE_COLUMNS = ["step", "lr", "momentum", "train_loss", "val_probe_bpc"]


@dataclass
class TrainingRun:
    cfg: RunConfig
    device: torch.device
    autocast: torch.dtype | None
    lr_max: float
    model: GPT
    forward_model: torch.nn.Module  # what the loop calls: the model, or its torch.compile wrapper (same parameters)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: BatchSampler
    val_probe: torch.Tensor  # a fixed val prefix, so that the points of a curve are comparable
    ranks: Ranks = Ranks()
    accumulation_steps: int = 1

    @classmethod
    def build(cls, cfg: RunConfig, device: torch.device, autocast: torch.dtype | None, lr_max: float,
              data_dir: Path, ranks: Ranks = Ranks()) -> TrainingRun:
        t = cfg.train
        micro = t.micro_batch_size or t.batch_size // ranks.world_size
        if t.batch_size % (ranks.world_size * micro):
            raise ConfigError(f"run {cfg.name!r}: train.batch_size ({t.batch_size}) does not split into "
                              f"{ranks.world_size} processes x micro-batches of {micro}")
        accumulation = t.batch_size // (ranks.world_size * micro)
        model = GPT(cfg.model).to(device)
        optimizer = build_optimizer(model, cfg.optimizer, lr=cfg.schedule.lr_min, momentum=cfg.schedule.momentum_max)
        scheduler = build_scheduler(optimizer, cfg.schedule, lr_max, t.iterations)  # counts global (optimizer) steps
        sampler = BatchSampler(load_split(data_dir / "train.bin"), cfg.model.context, t.batch_size, t.seed, device,
                               ranks.rank, ranks.world_size, accumulation)
        probe_bytes = t.eval_batches * t.batch_size * cfg.model.context + 1
        val_probe = load_split(data_dir / "val.bin")[:probe_bytes]
        forward_model: torch.nn.Module = model
        if ranks.enabled:
            forward_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        forward_model = torch.compile(forward_model) if t.compile else forward_model
        return cls(cfg, device, autocast, lr_max, model, forward_model, optimizer, scheduler, sampler, val_probe,
                   ranks, accumulation)

    @property
    def state_parts(self) -> dict[str, Any]:
        """What save_training_state / restore_training_state take."""
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler,
                "sampler_generator": self.sampler.generator, "config": self.cfg.model_dump(mode="json")}

    def loop_config(self) -> LoopConfig:
        t = self.cfg.train
        return LoopConfig(t.iterations, t.log_interval, t.eval_interval, t.checkpoint_every,
                          self.cfg.optimizer.grad_clip, self.autocast, check_every_step=self.device.type == "cpu",
                          accumulation_steps=self.accumulation_steps, world_size=self.ranks.world_size)

    def before_step(self, step: int) -> None:
        if self.cfg.train.aux_losses:
            self.model.set_aux_loss_progress(step / self.cfg.train.iterations)

    def probe(self) -> dict[str, float]:
        # Rank 0 alone probes (the others wait at the next all-reduce): through the plain model, not DDP's wrapper.
        model = self.model if self.ranks.enabled else self.forward_model
        bpc, _ = split_bpc(model, self.val_probe, self.cfg.model.context, self.cfg.eval.batch_size,
                           device=self.device, autocast_dtype=self.autocast)
        return {"val_probe_bpc": bpc}

    def params(self) -> dict[str, Any]:
        from chargpt.tracking import flatten

        muon = getattr(self.optimizer, "muon", None)
        return flatten(self.cfg.model_dump(mode="json", exclude={"name"})) | {
            "resolved.lr_max": self.lr_max, "resolved.precision": str(self.autocast or "fp32"),
            "model.n_params": self.model.num_params(), "train.val_probe_bytes": len(self.val_probe),
            "resolved.processes": self.ranks.world_size, "resolved.accumulation_steps": self.accumulation_steps,
            **({"resolved.muon_ns_dtype": str(muon.ns_dtype)} if muon else {})}


def iterations_to_targets(curve: list[dict], targets: list[float]) -> dict[str, int | None]:
    """{iters_to_bpc_<t>: the first logged step whose val probe BPC is at or below t, or None}."""
    probe = [(row["step"], row["val_probe_bpc"]) for row in curve if row.get("val_probe_bpc") is not None]
    return {target_metric(t): next((step for step, bpc in probe if bpc <= t), None) for t in targets}


def target_metric(target: float) -> str:
    return f"iters_to_bpc_{target:g}"


def write_outputs(run: TrainingRun, curve: list[dict], result: LoopState, reports: Path) -> dict[str, float]:
    """The curve (TSV + PNG) and the metrics JSON of a finished run; returns the metrics."""
    write_table(reports / "train_curve.tsv", CURVE_COLUMNS, [[r.get(c, "") for c in CURVE_COLUMNS] for r in curve],
                delimiter="\t")
    plot_training_curve(curve, reports / "train_curve.png", f"training: {run.cfg.name}")
    metrics = {"val_probe_bpc": curve[-1]["val_probe_bpc"], "iterations": result.step, "tokens": result.tokens,
               "train_seconds": round(result.seconds, 2), "tokens_per_second": round(result.tokens / result.seconds, 1),
               "lr_max": run.lr_max, **iterations_to_targets(curve, run.cfg.train.target_bpc)}
    write_json(reports / "train_metrics.json", metrics)
    return metrics
