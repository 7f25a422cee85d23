"""One training run assembled from its config: the model, its optimizer and schedule, the batches, the step
(chargpt.train.loop's TrainStep, compiled as train.compile and train.cuda_graphs say), the hooks around the loop,
and the outputs a finished run writes."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from chargpt.data.batches import BatchSampler, load_split
from chargpt.device import autocast, precision_name
from chargpt.errors import ConfigError
from chargpt.evaluation.scoring import split_score
from chargpt.io import write_json, write_table
from chargpt.model.gpt import GPT
from chargpt.settings import flatten
from chargpt.train.checkpoint import save_training_state
from chargpt.train.config import TrainConfig
from chargpt.train.distributed import Ranks
from chargpt.train.loop import LoopConfig, LoopState, TrainParts, TrainStep
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


def compile_mode(t: TrainConfig, device: torch.device) -> str | None:
    """How the model's forward and backward run: None (eagerly), "default" (torch.compile) or "reduce-overhead"
    (torch.compile, replaying its kernels from CUDA graphs: train.cuda_graphs). train.compile: auto compiles on
    CUDA only."""
    if t.cuda_graphs:
        if device.type != "cuda":
            raise ConfigError(
                f"train.cuda_graphs: true needs a CUDA device; this run is on {device.type} "
                f"(train.device: {t.device}); set train.cuda_graphs: false"
            )
        return "reduce-overhead"
    compiled = t.compile if t.compile != "auto" else device.type == "cuda"
    return "default" if compiled else None


@dataclass
class TrainingRun:
    cfg: RunConfig
    device: torch.device
    amp_dtype: torch.dtype | None  # what autocast lowers to (chargpt.device); None: fp32
    compile_mode: str | None  # compile_mode()'s
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
    ema: AveragedModel | None = None  # train.ema_decay's average of the weights

    @property
    def final_model(self) -> GPT:
        """The weights the run probes and saves: the average's where train.ema_decay is set, else the model's."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def iterations(self) -> int:
        """The steps this run trains: train.iterations, or their train.fp32_iterations_fraction where precision: auto
        gave fp32."""
        return self.cfg.train.steps(self.amp_dtype)

    @classmethod
    def build(
        cls,
        cfg: RunConfig,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        lr_max: float,
        data_dir: Path,
        ranks: Ranks = Ranks(),
    ) -> TrainingRun:
        t = cfg.train
        try:  # checked against train.nproc when the config loaded; this is the world torchrun gave
            accumulation = t.accumulation_steps(ranks.world_size)
        except ValueError as e:
            raise ConfigError(f"run {cfg.name!r}: {e}") from None
        mode = compile_mode(t, device)
        model = GPT(cfg.model).to(device)
        optimizer = build_optimizer(model, cfg.optimizer, lr=cfg.schedule.lr_min, momentum=cfg.schedule.momentum_max)
        # counts global (optimizer) steps
        scheduler = build_scheduler(optimizer, cfg.schedule, lr_max, t.steps(amp_dtype))
        scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
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
        forward_model = torch.compile(forward_model, mode=mode) if mode else forward_model
        ema = None
        if t.ema_decay is not None:  # a copy of the weights; its first update copies them, later ones average
            ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=False)
        return cls(
            cfg,
            device,
            amp_dtype,
            mode,
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
            ema,
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
            "ema": self.ema,
            "resolved": {"precision": precision_name(self.amp_dtype), "iterations": self.iterations},
        }

    def parts(self) -> TrainParts:
        step = TrainStep(
            self.forward_model,
            self.model.parameters(),
            self.optimizer,
            grad_clip=self.cfg.optimizer.grad_clip,
            amp_context=lambda: autocast(self.device, self.amp_dtype),
            micro_batches=self.accumulation_steps,
            scaler=self.scaler,
        )
        return TrainParts(self.model, self.optimizer, self.scheduler, self.sampler.next, step)

    def loop_config(self, max_seconds: float | None = None) -> LoopConfig:
        """max_seconds: stop (RunTooLong) when the steps left would take longer (chargpt.pipeline.harness's limit)."""
        t = self.cfg.train
        return LoopConfig(
            self.iterations,
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

    def before_step(self, step: int) -> None:
        if self.cfg.train.aux_losses:
            self.model.set_aux_loss_progress(step / self.iterations)
        if self.cfg.train.batch_size_warmup is not None:
            self.sampler.set_batch_size(self.cfg.train.batch_size_at(step, self.iterations))

    def after_step(self) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def probe(self) -> dict[str, float]:
        # Rank 0 alone probes (the others wait at the next all-reduce): through the plain model, not DDP's wrapper;
        # the average's, where the run keeps one.
        model = self.final_model if self.ranks.enabled or self.ema is not None else self.forward_model
        score = split_score(
            model,
            self.val_probe,
            self.cfg.model.context,
            self.cfg.eval.batch_size,
            device=self.device,
            amp_dtype=self.amp_dtype,
        )
        return {"val_probe_bpc": score.bpc, "val_probe_accuracy": score.accuracy}

    def params(self) -> dict[str, Any]:
        muon = getattr(self.optimizer, "muon", None)
        return flatten(self.cfg.model_dump(mode="json", exclude={"name"})) | {
            "resolved.lr_max": self.lr_max,
            "resolved.precision": precision_name(self.amp_dtype),
            "resolved.iterations": self.iterations,
            "resolved.compile": self.compile_mode is not None,
            "resolved.cuda_graphs": self.compile_mode == "reduce-overhead",
            "model.n_params": self.model.num_params(),
            "train.val_probe_bytes": len(self.val_probe),
            "resolved.processes": self.ranks.world_size,
            "resolved.accumulation_steps": self.accumulation_steps,
            **({"resolved.muon_ns_dtype": str(muon.ns_dtype)} if muon else {}),
        }


class RunHooks:
    """What happens around a run's steps (chargpt.train.loop's hooks). Every rank: the step-dependent loss weights
    and the stop flag. The rank that records (rank 0, `recording=True`): the val probe at eval intervals and the
    curve (its rows also go to `log_step`). Where `state_path` is given, the whole training state at checkpoints."""

    def __init__(
        self,
        run: TrainingRun,
        stop_requested: Callable[[], int | None] = lambda: None,
        *,
        recording: bool = True,
        curve: list[dict] | None = None,
        log_step: Callable[[int, dict[str, float]], None] = lambda step, metrics: None,
        state_path: Path | None = None,
        tracking_id: str | None = None,  # saved with the state, so a resumed run continues its MLflow run
    ):
        self.run, self._stop, self.recording, self.log_step = run, stop_requested, recording, log_step
        self.curve = curve if curve is not None else []
        self.state_path, self.tracking_id = state_path, tracking_id

    def before_step(self, step: int) -> None:
        self.run.before_step(step)

    def after_step(self, done: int) -> None:
        self.run.after_step()

    def evaluate(self) -> dict[str, float]:
        return self.run.probe() if self.recording else {}

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if self.recording:
            self.curve.append({"step": step, **metrics})
            self.log_step(step, metrics)

    def on_checkpoint(self, state: LoopState) -> None:
        if self.state_path is not None:
            save_training_state(
                self.state_path,
                **self.run.state_parts,
                loop=asdict(state),
                curve=self.curve,
                mlflow_run_id=self.tracking_id,
            )

    def stop_requested(self) -> int | None:
        return self._stop()


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
