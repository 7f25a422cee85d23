"""The optimizer, schedule, lr_range_test and train sections of params.yaml."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, model_validator

from chargpt.settings import Fraction, PositiveFloat, PositiveInt, Section

if TYPE_CHECKING:
    import torch


class OptimizerConfig(Section):
    # sgd (Nesterov) | adamw (beta1 is the cycled momentum) | muon: torch.optim.Muon (Nesterov, its momentum
    # cycled like beta1) for the transformer blocks' weight matrices and AdamW for the rest, at one LR.
    name: Literal["sgd", "adamw", "muon"] = "sgd"
    weight_decay: Annotated[float, Field(ge=0)] = 1e-5
    nesterov: bool = True  # SGD only
    beta2: Annotated[float, Field(gt=0, lt=1)] = 0.99  # AdamW (and muon's AdamW part); beta1 is the cycled momentum
    grad_clip: Annotated[float, Field(ge=0)] = 1.0  # max global grad norm; 0 disables
    # muon: the dtype of its Newton-Schulz iteration. auto: bf16 (torch's) where bf16 matmul is native (GPUs
    # with bf16, CPUs with avx512_bf16 or amx_bf16), fp32 elsewhere (emulated bf16 is far slower; docs/results.md).
    muon_ns_dtype: Literal["auto", "bf16", "fp32"] = "auto"


class ScheduleConfig(Section):
    """onecycle: Smith & Topin's 1cycle: LR lr_min -> lr_max -> lr_min while momentum goes max -> min -> max,
    then a short annihilation phase to lr_min / final_div_factor (torch's three-phase OneCycleLR).
    cosine: the control, the usual GPT recipe: linear warmup to lr_max over warmup_steps, then cosine
    decay to the floor lr_min; momentum (AdamW's beta1) held at momentum_max."""

    name: Literal["onecycle", "cosine"] = "onecycle"
    lr_min: PositiveFloat = 1e-4
    lr_max: PositiveFloat | Literal["auto"] = 0.1  # auto: the LR range test's suggestion
    momentum_max: Annotated[float, Field(gt=0, lt=1)] = 0.9
    momentum_min: Annotated[float, Field(gt=0, lt=1)] = 0.8
    # onecycle: three_phase (Smith & Topin): up for pct_start of the steps, down as long, then anneal to
    # lr_min / final_div_factor; false: torch's two-phase form, up for pct_start, then down to
    # lr_min / final_div_factor.
    three_phase: bool = True
    pct_start: Annotated[float, Field(gt=0, lt=1)] = 0.45  # fraction of steps in the ramp up (three-phase: and down)
    final_div_factor: Annotated[float, Field(ge=1)] = 1.0
    anneal: Literal["linear", "cos"] = "linear"  # onecycle only; Smith uses linear ramps
    warmup_steps: Annotated[int, Field(ge=1)] = 100  # cosine only

    @model_validator(mode="after")
    def _ranges_ordered(self) -> ScheduleConfig:
        if self.lr_max != "auto" and self.lr_min >= self.lr_max:
            raise ValueError(f"lr_min: {self.lr_min} must be below lr_max ({self.lr_max})")
        if self.three_phase and self.pct_start >= 0.5:
            raise ValueError(
                f"pct_start: {self.pct_start} must be below 0.5 with three_phase (two ramps of pct_start each)"
            )
        if self.momentum_min > self.momentum_max:
            raise ValueError(f"momentum_min: {self.momentum_min} must not exceed momentum_max ({self.momentum_max})")
        return self


class LRRangeTestConfig(Section):
    """exponential_loss: the LR grows exponentially, the smoothed training loss is tracked, and the suggested max LR
    is the LR at its minimum / min_loss_divisor. linear_accuracy (Smith 2017, as the seed ran it): the LR grows
    linearly, the next-byte accuracy on held-out val windows is measured every eval_interval steps, and the test
    suggests lr_min where the accuracy starts to rise and lr_max where it flattens (docs/pipeline.md)."""

    method: Literal["exponential_loss", "linear_accuracy"] = "exponential_loss"
    lr_start: PositiveFloat = 1e-5
    lr_end: PositiveFloat = 10.0
    iterations: Annotated[int, Field(ge=10)] = 200
    smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.95  # EMA factor of the loss
    divergence: Annotated[float, Field(gt=1)] = 4.0  # stop once smoothed loss > divergence * best
    # The suggested max LR: the LR at the smoothed-loss minimum divided by this (Smith picks max LR
    # just before the loss turns up; the minimum itself is already too aggressive).
    min_loss_divisor: Annotated[float, Field(ge=1)] = 10.0
    skip_start: Annotated[int, Field(ge=0)] = 10  # the first points are noise from the EMA warm-up
    # linear_accuracy only: measure val accuracy every eval_interval steps, on eval_batches batches of val windows;
    # suggest lr_min where the accuracy first gains rise_fraction of its whole rise (first point to peak), and
    # lr_max where it first gains flat_fraction of it (what is left of the rise is the flat part).
    eval_interval: PositiveInt = 10
    eval_batches: PositiveInt = 4
    rise_fraction: Fraction = 0.1
    flat_fraction: Fraction = 0.9

    @model_validator(mode="after")
    def _bounds_ordered(self) -> LRRangeTestConfig:
        if self.lr_start >= self.lr_end:
            raise ValueError(f"lr_start: {self.lr_start} must be below lr_end ({self.lr_end})")
        if self.rise_fraction >= self.flat_fraction:
            raise ValueError(f"rise_fraction: {self.rise_fraction} must be below flat_fraction ({self.flat_fraction})")
        if self.method == "linear_accuracy" and self.iterations // self.eval_interval < 3:
            raise ValueError(
                f"eval_interval: {self.eval_interval} gives {self.iterations // self.eval_interval} "
                f"accuracy point(s) over {self.iterations} iterations; linear_accuracy needs at least 3"
            )
        if self.skip_start >= self.iterations:
            raise ValueError(f"skip_start: {self.skip_start} must be below iterations ({self.iterations})")
        if 1 / (1 - self.smoothing) > self.iterations / 2:
            # The EMA would lag most of the sweep and put the loss minimum at far too high an LR.
            raise ValueError(
                f"smoothing: {self.smoothing} averages over ~{1 / (1 - self.smoothing):.0f} steps, more than "
                f"half of iterations ({self.iterations}); lower smoothing or raise iterations"
            )
        return self


class TrainConfig(Section):
    iterations: PositiveInt = 24000
    batch_size: PositiveInt = 32  # the global batch: sequences per optimizer step, over all processes
    # Processes the train stage runs (torchrun, DistributedDataParallel: one per GPU, or CPU workers with gloo).
    nproc: PositiveInt = 1
    # Sequences per forward pass and process; batch_size / (processes x micro_batch_size) steps of gradient
    # accumulation make up one optimizer step. null: batch_size / processes (no accumulation).
    micro_batch_size: PositiveInt | None = None
    seed: int = 1337
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # bf16 / fp16: autocast (weights and optimizer stay fp32; fp16 adds a GradScaler). auto: bf16 on CUDA of
    # compute capability >= 8.0, fp16 below it (T4, V100: no bf16 tensor cores), and on a CPU bf16 only where
    # it has native bf16 matmul (avx512_bf16 / amx_bf16), else fp32 (chargpt/device.py).
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    # Where precision: auto resolves to fp32 (a CPU without native bf16), train this share of `iterations` (rounded),
    # so that a recipe whose steps were timed in bf16 keeps its training time at fp32's slower step. null: all of them.
    # A precision set outright trains `iterations` in it.
    fp32_iterations_fraction: Fraction | None = None
    # CUDA: fp32 matmuls (fp32 precision, and what bf16 autocast leaves in fp32) on TF32 tensor cores (10-bit
    # mantissa, several times faster); false: IEEE fp32. No effect on a CPU.
    tf32: bool = True
    eval_interval: PositiveInt = 500
    eval_batches: PositiveInt = 20  # batches of val windows per interval estimate (the full split is `evaluate`)
    log_interval: PositiveInt = 50
    # Save the whole training state (checkpoints/<run>/last.pt) this often, and on SIGTERM/SIGINT; 0: never.
    checkpoint_every: Annotated[int, Field(ge=0)] = 1000
    threads: Annotated[int, Field(ge=0)] = 0  # torch intra-op threads on CPU; 0: torch's default
    # An MLflow tracking server (MLFLOW_TRACKING_URI) that does not answer: fail before any work, or log
    # to the local SQLite store instead (the run is tagged with the URI it could not reach).
    on_tracking_unreachable: Literal["fail", "local"] = "fail"
    # Iterations to target: the first step at which the val probe BPC reached each of these (metrics
    # iters_to_bpc_<target>; null where it never did). The super-convergence claim is about iterations.
    target_bpc: list[PositiveFloat] = [2.0, 1.5, 1.3, 1.2]
    # Al-Rfou et al.'s auxiliary losses at intermediate layers: every block but the last also predicts the
    # next byte, layer l of n weighted 1 -> 0 over the first l/2n of training (the objective is the weighted
    # mean, so train_loss includes them until half-way; the val probe and evaluate never do).
    aux_losses: bool = False
    # torch.compile the model for training and evaluation (a minute or more of compiling first). auto: on CUDA,
    # not on a CPU (where it measured slower; docs/results.md).
    compile: bool | Literal["auto"] = "auto"
    # Compile in torch's "reduce-overhead" mode: torch.compile records the compiled forward and backward as CUDA
    # graphs and replays them (no launch gaps); the optimizer steps outside, on torch's fused kernels. CUDA only;
    # implies compile. Off by default (docs/gpu.md has what it measured).
    cuda_graphs: bool = False
    # Divergence that stays finite: stop when an interval's mean train loss rises this many nats above the
    # first interval's (a val probe worse than a uniform guess, 8 bits per byte, stops it too).
    max_loss_rise: PositiveFloat = 1.0

    def steps(self, amp_dtype: torch.dtype | None) -> int:
        """The optimizer steps to train under the run's resolved autocast dtype (None: fp32)."""
        if self.precision == "auto" and amp_dtype is None and self.fp32_iterations_fraction is not None:
            return max(1, round(self.iterations * self.fp32_iterations_fraction))
        return self.iterations

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per optimizer step and process: batch_size / (world_size x micro_batch_size)."""
        micro = self.micro_batch_size or self.batch_size // world_size
        if micro == 0 or self.batch_size % (world_size * micro):
            raise ValueError(
                f"train.batch_size: {self.batch_size} does not split into {world_size} process(es) x micro-batches "
                f"of {self.micro_batch_size or 'batch_size / processes'} sequences (train.micro_batch_size)"
            )
        return self.batch_size // (world_size * micro)
