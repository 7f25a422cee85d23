"""One training run assembled from its config sections: the model, its optimizer and schedule, the batches, the step
(chargpt.train.loop's TrainStep, compiled as train.compile and train.cuda_graphs say), the hooks around the loop
(loop_hooks), and the outputs a finished run writes."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from chargpt.data.batches import BatchSampler, load_split
from chargpt.device import autocast, precision_name
from chargpt.errors import ConfigError
from chargpt.evaluation.scoring import split_score
from chargpt.io import write_json, write_table
from chargpt.model.config import ModelConfig
from chargpt.model.gpt import GPT
from chargpt.train.checkpoint import save_training_state
from chargpt.train.config import OptimizerConfig, ScheduleConfig, TrainConfig
from chargpt.train.distributed import Ranks
from chargpt.train.loop import LoopConfig, LoopHooks, LoopState, TrainParts, TrainStep
from chargpt.train.optimizers import build_optimizer
from chargpt.train.schedule import build_scheduler

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


def aux_loss_weights(progress: float, n_layer: int, device: torch.device | None = None) -> torch.Tensor | None:
    """Al-Rfou et al.'s weights of the intermediate losses (n_layer - 1,) at `progress` (0..1) of training: layer l
    of n fades linearly from 1 to 0 over the first l / 2n (the lowest stops first, all are off by half-way); None
    once all are off, so that the forward computes none of them. Made on `device`: no copy to it before a step."""
    if progress >= (n_layer - 1) / (2 * n_layer):
        return None
    ends = torch.tensor([layer / (2 * n_layer) for layer in range(1, n_layer)], device=device)
    return (1 - torch.full((), progress, device=device) / ends).clamp(min=0)


class AuxLossSchedule:
    """train.aux_losses: the intermediate losses' weights (aux_loss_weights), set from the global step before each
    step; inputs() gives them to the step's forward while any is on."""

    def __init__(self, n_layer: int, steps: int, device: torch.device):
        self.n_layer, self.steps, self.device = n_layer, steps, device
        self.weights: torch.Tensor | None = None

    def before_step(self, step: int) -> None:
        self.weights = aux_loss_weights(step / self.steps, self.n_layer, self.device)

    def inputs(self) -> dict[str, torch.Tensor]:
        return {"aux_weights": self.weights} if self.weights is not None else {}


@dataclass(kw_only=True)
class TrainingRun:
    """One run's parts, complete when built (build_training_run): train_loop takes its `parts` and `loop`, and the
    hooks loop_hooks(run, ...) makes."""

    config: dict[str, Any]  # the run's whole config, as its saved state holds it (a resumed run must match it)
    train: TrainConfig
    device: torch.device
    amp_dtype: torch.dtype | None  # what autocast lowers to (chargpt.device); None: fp32
    compile_mode: str | None  # compile_mode()'s
    lr_max: float
    model: GPT
    forward_model: torch.nn.Module  # what the step calls: the model, or its DDP / torch.compile wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None  # fp16 only
    sampler: BatchSampler
    val_probe: torch.Tensor  # a fixed val prefix, so that the points of a curve are comparable
    probe_batch_size: int
    parts: TrainParts  # what train_loop steps: the model, optimizer, scheduler, batches and the step
    loop: LoopConfig
    ranks: Ranks = Ranks()
    accumulation_steps: int = 1
    aux_losses: AuxLossSchedule | None = None

    @property
    def iterations(self) -> int:
        """The steps this run trains: train.iterations, or their train.fp32_iterations_fraction where precision: auto
        gave fp32."""
        return self.loop.total_steps

    @property
    def state_parts(self) -> dict[str, Any]:
        """What save_training_state / restore_training_state take."""
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
            "sampler_generator": self.sampler.generator,
            "config": self.config,
            "resolved": {"precision": precision_name(self.amp_dtype), "iterations": self.iterations},
        }

    def probe(self) -> dict[str, float]:
        # Rank 0 alone probes (the others wait at the next all-reduce): through the plain model, not DDP's wrapper.
        model = self.model if self.ranks.enabled else self.forward_model
        score = split_score(
            model,
            self.val_probe,
            self.model.cfg.context,
            self.probe_batch_size,
            device=self.device,
            amp_dtype=self.amp_dtype,
        )
        return {"val_probe_bpc": score.bpc, "val_probe_accuracy": score.accuracy}

    def params(self) -> dict[str, Any]:
        """The run's config by section, with what it resolved to here (MLflow flattens it to key paths)."""
        muon = getattr(self.optimizer, "muon", None)
        config = {k: v for k, v in self.config.items() if k != "name"}
        return config | {
            "model": config["model"] | {"n_params": self.model.num_params()},
            "train": config["train"] | {"val_probe_bytes": len(self.val_probe)},
            "resolved": {
                "lr_max": self.lr_max,
                "precision": precision_name(self.amp_dtype),
                "iterations": self.iterations,
                "compile": self.compile_mode is not None,
                "cuda_graphs": self.compile_mode == "reduce-overhead",
                "processes": self.ranks.world_size,
                "accumulation_steps": self.accumulation_steps,
                **({"muon_ns_dtype": str(muon.ns_dtype)} if muon else {}),
            },
        }


def build_training_run(
    *,
    model: ModelConfig,
    optimizer: OptimizerConfig,
    schedule: ScheduleConfig,
    train: TrainConfig,
    probe_batch_size: int,
    config: dict[str, Any],
    lr_max: float,
    data_dir: Path,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    ranks: Ranks = Ranks(),
    max_seconds: float | None = None,
) -> TrainingRun:
    """The run of these sections on `device`: its model, optimizer, schedule over its steps, batches, val probe and
    step. `config`: the whole run config as a dict, saved with its state. max_seconds: stop (RunTooLong) when the
    steps left would take longer (chargpt.pipeline.harness's limit)."""
    mode = compile_mode(train, device)
    steps = train.steps(amp_dtype)
    aux_losses = AuxLossSchedule(model.n_layer, steps, device) if train.aux_losses else None
    try:  # checked against train.nproc when the config loaded; this is the world torchrun gave
        accumulation = train.accumulation_steps(ranks.world_size)
    except ValueError as e:
        raise ConfigError(f"run {config.get('name')!r}: {e}") from None
    net = GPT(model).to(device)
    opt = build_optimizer(net, optimizer, lr=schedule.lr_min, momentum=schedule.momentum_max)
    scheduler = build_scheduler(opt, schedule, lr_max, steps)  # counts optimizer steps
    sampler = BatchSampler(
        load_split(data_dir / "train.bin"),
        model.context,
        train.batch_size,
        train.seed,
        device,
        ranks.rank,
        ranks.world_size,
        accumulation,
    )
    probe_bytes = train.eval_batches * train.batch_size * model.context + 1
    val_probe = load_split(data_dir / "val.bin")[:probe_bytes]
    forward_model: torch.nn.Module = net
    if ranks.enabled:
        forward_model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    forward_model = torch.compile(forward_model, mode=mode) if mode else forward_model
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    loop = LoopConfig(
        steps,
        train.log_interval,
        train.eval_interval,
        train.checkpoint_every,
        check_every_step=device.type == "cpu",
        world_size=ranks.world_size,
        max_loss_rise=train.max_loss_rise,
        max_seconds=max_seconds,
        # worse than a uniform guess over the 256 bytes: 8 bits, ln(256) nats (plus the margin)
        metric_limits={"val_probe_bpc": UNIFORM_BPC, "train_loss": math.log(256) + train.max_loss_rise},
    )
    step = TrainStep(
        forward_model,
        net.parameters(),
        opt,
        grad_clip=optimizer.grad_clip,
        amp_context=lambda: autocast(device, amp_dtype),
        micro_batches=accumulation,
        scaler=scaler,
        inputs=aux_losses.inputs if aux_losses else dict,
    )
    return TrainingRun(
        config=config,
        train=train,
        device=device,
        amp_dtype=amp_dtype,
        compile_mode=mode,
        lr_max=lr_max,
        model=net,
        forward_model=forward_model,
        optimizer=opt,
        scheduler=scheduler,
        scaler=scaler,
        sampler=sampler,
        val_probe=val_probe,
        probe_batch_size=probe_batch_size,
        parts=TrainParts(net, opt, scheduler, sampler.next, step),
        loop=loop,
        ranks=ranks,
        accumulation_steps=accumulation,
        aux_losses=aux_losses,
    )


def loop_hooks(
    run: TrainingRun,
    *,
    recording: bool = True,
    curve: list[dict] | None = None,
    log_step: Callable[[int, dict[str, float]], None] | None = None,
    state_path: Path | None = None,
    tracking_id: str | None = None,
    stop_requested: Callable[[], int | None] = lambda: None,
) -> LoopHooks:
    """What happens around a run's steps. Every rank: the step's loss weights and the stop flag. The rank that
    records (rank 0): the val probe at eval intervals and the curve's rows (appended to `curve`, and given to
    `log_step`). Where `state_path` is given, the whole training state at checkpoints, with the curve so far and
    `tracking_id` (so that a resumed run continues its MLflow run)."""
    curve = curve if curve is not None else []

    def on_metrics(step: int, metrics: dict[str, float]) -> None:
        curve.append({"step": step, **metrics})
        if log_step is not None:
            log_step(step, metrics)

    def on_checkpoint(state: LoopState) -> None:
        parts = run.state_parts
        save_training_state(state_path, **parts, loop=asdict(state), curve=curve, mlflow_run_id=tracking_id)

    quiet = LoopHooks()
    return LoopHooks(
        evaluate=run.probe if recording else quiet.evaluate,
        on_metrics=on_metrics if recording else quiet.on_metrics,
        on_checkpoint=on_checkpoint if state_path is not None else quiet.on_checkpoint,
        stop_requested=stop_requested,
        before_step=run.aux_losses.before_step if run.aux_losses else quiet.before_step,
    )


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
        **iterations_to_targets(curve, run.train.target_bpc),
    }
    if run.scaler is not None:
        metrics["fp16_skipped_steps"] = result.skipped_steps
    write_json(reports / "train_metrics.json", metrics)
    return metrics
