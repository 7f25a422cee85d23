"""The pieces of one training run, built from its config, and the outputs a finished run writes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from chargpt.data.batches import BatchSampler, load_split
from chargpt.device import autocast, precision_name
from chargpt.errors import ConfigError
from chargpt.evaluation.scoring import split_score
from chargpt.io import write_json, write_table
from chargpt.model.gpt import GPT
from chargpt.settings import flatten
from chargpt.train.config import TrainConfig
from chargpt.train.cuda_graphs import GraphedStep
from chargpt.train.distributed import Ranks
from chargpt.train.loop import LoopConfig, LoopHooks, LoopState, TrainParts, TrainStep
from chargpt.train.optimizers import build_optimizer
from chargpt.train.schedule import build_scheduler

if TYPE_CHECKING:  # annotations only: train sits below pipeline in the import layers (pyproject.toml)
    from chargpt.pipeline.config import RunConfig

CURVE_COLUMNS = [
    "step",
    "lr",
    "momentum",
    "train_loss",
    "grad_norm",
    "clipped_fraction",
    "val_probe_bpc",
    "val_probe_accuracy",
]
UNIFORM_BPC = 8.0  # a uniform guess over the 256 byte values


@dataclass(frozen=True)
class Execution:
    """How the run executes on its device (not what it computes): compile and CUDA graphs, resolved from auto."""

    compile: bool
    cuda_graphs: bool

    @classmethod
    def resolve(cls, t: TrainConfig, device: torch.device, autocast: torch.dtype | None, world_size: int) -> Execution:
        cuda = device.type == "cuda"
        if t.cuda_graphs and not cuda:
            raise ConfigError(
                f"train.cuda_graphs: true needs a CUDA device; this run is on {device.type} "
                f"(train.device: {t.device}); set train.cuda_graphs: false"
            )
        if t.cuda_graphs and autocast == torch.float16:
            raise ConfigError(
                f"train.cuda_graphs: true cannot combine with fp16 (train.precision: {t.precision} chose "
                f"fp16 on this GPU; its GradScaler decides on the host); set train.cuda_graphs: false"
            )
        return cls(compile=t.compile if t.compile != "auto" else cuda, cuda_graphs=t.cuda_graphs)


@dataclass
class TrainingRun:
    cfg: RunConfig
    device: torch.device
    autocast: torch.dtype | None
    execution: Execution
    lr_max: float
    model: GPT
    forward_model: (
        torch.nn.Module
    )  # what the step calls: the model, or its DDP / torch.compile wrapper (same parameters)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None  # fp16 only
    sampler: BatchSampler
    val_probe: torch.Tensor  # a fixed val prefix, so that the points of a curve are comparable
    ranks: Ranks = Ranks()
    accumulation_steps: int = 1

    @classmethod
    def build(
        cls,
        cfg: RunConfig,
        device: torch.device,
        autocast: torch.dtype | None,
        lr_max: float,
        data_dir: Path,
        ranks: Ranks = Ranks(),
    ) -> TrainingRun:
        t = cfg.train
        micro = t.micro_batch_size or t.batch_size // ranks.world_size
        if t.batch_size % (ranks.world_size * micro):
            raise ConfigError(
                f"run {cfg.name!r}: train.batch_size ({t.batch_size}) does not split into "
                f"{ranks.world_size} processes x micro-batches of {micro}"
            )
        accumulation = t.batch_size // (ranks.world_size * micro)
        execution = Execution.resolve(t, device, autocast, ranks.world_size)
        model = GPT(cfg.model).to(device)
        optimizer = build_optimizer(
            model,
            cfg.optimizer,
            lr=cfg.schedule.lr_min,
            momentum=cfg.schedule.momentum_max,
            capturable=execution.cuda_graphs,
        )
        scheduler = build_scheduler(optimizer, cfg.schedule, lr_max, t.iterations)  # counts global (optimizer) steps
        scaler = torch.amp.GradScaler(device.type) if autocast == torch.float16 else None
        sampler = BatchSampler(
            load_split(data_dir / "train.bin"),
            cfg.model.context,
            t.batch_size,
            t.seed,
            device,
            ranks.rank,
            ranks.world_size,
            accumulation,
        )
        probe_bytes = t.eval_batches * t.batch_size * cfg.model.context + 1
        val_probe = load_split(data_dir / "val.bin")[:probe_bytes]
        forward_model: torch.nn.Module = model
        if ranks.enabled:
            forward_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        forward_model = torch.compile(forward_model) if execution.compile else forward_model
        return cls(
            cfg,
            device,
            autocast,
            execution,
            lr_max,
            model,
            forward_model,
            optimizer,
            scheduler,
            scaler,
            sampler,
            val_probe,
            ranks,
            accumulation,
        )

    @property
    def state_parts(self) -> dict[str, Any]:
        """What save_training_state / restore_training_state take."""
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
            "sampler_generator": self.sampler.generator,
            "config": self.cfg.model_dump(mode="json"),
        }

    def parts(self) -> TrainParts:
        step = TrainStep(
            self.forward_model,
            self.model.parameters(),
            self.optimizer,
            grad_clip=self.cfg.optimizer.grad_clip,
            autocast=lambda: autocast(self.device, self.autocast),
            micro_batches=self.accumulation_steps,
            scaler=self.scaler,
        )
        if self.execution.cuda_graphs:
            # The auxiliary losses switch off half-way, which changes the model's graph: a new capture.
            step = GraphedStep(step, self.optimizer, self.device, graph_key=lambda: self.model.aux_active)
        return TrainParts(self.model, self.optimizer, self.scheduler, self.sampler.next, step)

    def loop_config(self, max_seconds: float | None = None) -> LoopConfig:
        """max_seconds: stop (RunTooLong) when the steps left would take longer (chargpt.pipeline.stage's limit)."""
        t = self.cfg.train
        return LoopConfig(
            t.iterations,
            t.log_interval,
            t.eval_interval,
            t.checkpoint_every,
            check_every_step=self.device.type == "cpu",
            world_size=self.ranks.world_size,
            max_loss_rise=t.max_loss_rise,
            max_seconds=max_seconds,
            # worse than a uniform guess over the 256 bytes: 8 bits, ln(256) nats (plus the margin)
            metric_limits={"val_probe_bpc": UNIFORM_BPC, "train_loss": math.log(256) + t.max_loss_rise},
        )

    def hooks(self, **overrides: Any) -> LoopHooks:
        """The hooks every rank uses (step-dependent loss weights); rank 0 adds evaluation, metrics, checkpoints."""
        return LoopHooks(before_step=self.before_step, **overrides)

    def before_step(self, step: int) -> None:
        if self.cfg.train.aux_losses:
            self.model.set_aux_loss_progress(step / self.cfg.train.iterations)

    def probe(self) -> dict[str, float]:
        # Rank 0 alone probes (the others wait at the next all-reduce): through the plain model, not DDP's wrapper.
        model = self.model if self.ranks.enabled else self.forward_model
        score = split_score(
            model,
            self.val_probe,
            self.cfg.model.context,
            self.cfg.eval.batch_size,
            device=self.device,
            autocast_dtype=self.autocast,
            cuda_graphs=self.execution.cuda_graphs,
        )
        return {"val_probe_bpc": score.bpc, "val_probe_accuracy": score.accuracy}

    def params(self) -> dict[str, Any]:
        muon = getattr(self.optimizer, "muon", None)
        return flatten(self.cfg.model_dump(mode="json", exclude={"name"})) | {
            "resolved.lr_max": self.lr_max,
            "resolved.precision": precision_name(self.autocast),
            "resolved.compile": self.execution.compile,
            "resolved.cuda_graphs": self.execution.cuda_graphs,
            "model.n_params": self.model.num_params(),
            "train.val_probe_bytes": len(self.val_probe),
            "resolved.processes": self.ranks.world_size,
            "resolved.accumulation_steps": self.accumulation_steps,
            **({"resolved.muon_ns_dtype": str(muon.ns_dtype)} if muon else {}),
        }


def iterations_to_targets(curve: list[dict], targets: list[float]) -> dict[str, int | None]:
    """{iters_to_bpc_<t>: the first logged step whose val probe BPC is at or below t, or None}."""
    probe = [(row["step"], row["val_probe_bpc"]) for row in curve if row.get("val_probe_bpc") is not None]
    return {target_metric(t): next((step for step, bpc in probe if bpc <= t), None) for t in targets}


def target_metric(target: float) -> str:
    return f"iters_to_bpc_{target:g}"


def write_outputs(run: TrainingRun, curve: list[dict], result: LoopState, reports: Path) -> dict[str, float]:
    """The curve (TSV) and the metrics JSON of a finished run; returns the metrics."""
    write_table(
        reports / "train_curve.tsv",
        CURVE_COLUMNS,
        [[r.get(c, "") for c in CURVE_COLUMNS] for r in curve],
        delimiter="\t",
    )
    metrics = {
        "val_probe_bpc": curve[-1]["val_probe_bpc"],
        "val_probe_accuracy": curve[-1]["val_probe_accuracy"],
        "iterations": result.step,
        "tokens": result.tokens,
        "train_seconds": round(result.seconds, 2),
        "tokens_per_second": round(result.tokens / result.seconds, 1),
        **iterations_to_targets(curve, run.cfg.train.target_bpc),
    }
    if run.scaler is not None:
        metrics["fp16_skipped_steps"] = result.skipped_steps
    write_json(reports / "train_metrics.json", metrics)
    return metrics
