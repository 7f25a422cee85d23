"""Typed configuration: one pydantic model per params.yaml section, validated once at the stage boundary.

A named run is the shared defaults with the run's overrides deep-merged on top (`runs.<name>` in
params.yaml). Library functions take the narrow section they need, never the raw YAML dict.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from chargpt.errors import ConfigError

ENWIK8_URL = "http://mattmahoney.net/dc/enwik8.zip"
SECTIONS = ("data", "model", "optimizer", "schedule", "lr_range_test", "train", "eval")
RUN_SECTIONS = SECTIONS[1:]  # what a named run may override

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]


class _Section(BaseModel):
    # extra="forbid": a typo in params.yaml is an error naming the key, not a silently ignored value.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Checksums(_Section):
    """Published digests of a corpus; any field left null is not checked (the observed value is recorded)."""

    archive_size: PositiveInt | None = None
    archive_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    size: PositiveInt | None = None
    md5: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class DataConfig(_Section):
    url: str = ENWIK8_URL
    # How to unpack what `url` points at; auto: by the URL's suffix (.zip, .bz2, .gz, anything else raw).
    format: Literal["auto", "zip", "bz2", "gz", "raw"] = "auto"
    member: str | None = "enwik8"  # the zip member to extract; null: the archive must hold exactly one file
    # enwik8's published digests (http://mattmahoney.net/dc/textdata.html) and its zip's as served there
    checksums: Checksums | None = Checksums(
        archive_size=36_445_475, archive_sha256="547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc",
        size=100_000_000, md5="a1fa5ffddb56f4953e226637dabbb36a",
        sha256="2b49720ec4d78c3c9fabaee6e4179a5e997302b3a70029f30f2d582218c024a8")
    split: tuple[Fraction, Fraction, Fraction] = (0.9, 0.05, 0.05)  # train/val/test by byte offset
    timeout_s: PositiveFloat = 60.0
    retries: Annotated[int, Field(ge=0)] = 3

    @model_validator(mode="after")
    def _split_sums_to_one(self) -> DataConfig:
        if not math.isclose(sum(self.split), 1.0, abs_tol=1e-9):
            raise ValueError(f"split: fractions must sum to 1, got {list(self.split)} (sum {sum(self.split)})")
        return self


class ModelConfig(_Section):
    n_layer: PositiveInt = 12
    d_model: PositiveInt = 512
    n_head: PositiveInt = 8
    d_ff: PositiveInt = 2048
    context: PositiveInt = 512
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    # per_layer: Al-Rfou et al.'s learned positional embedding of each layer's own, added at every layer's input;
    # input: one, added to the byte embedding only (GPT-2's).
    positions: Literal["per_layer", "input"] = "per_layer"
    vocab_size: Literal[256] = 256  # bytes, no remapping
    bias: bool = True  # biases in the Linear layers (LayerNorm keeps its own); the seed's model has none
    # The output head shares the byte embedding's matrix (Press & Wolf 2017), as the seed's model does.
    tie_embeddings: bool = False

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.d_model % self.n_head:
            raise ValueError(f"n_head: {self.n_head} must divide d_model ({self.d_model})")
        return self


class OptimizerConfig(_Section):
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


class ScheduleConfig(_Section):
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
    # lr_min / final_div_factor; false: torch's two-phase form, up for pct_start, then down to lr_min / final_div_factor.
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
            raise ValueError(f"pct_start: {self.pct_start} must be below 0.5 with three_phase (two ramps of pct_start each)")
        if self.momentum_min > self.momentum_max:
            raise ValueError(f"momentum_min: {self.momentum_min} must not exceed momentum_max ({self.momentum_max})")
        return self


class LRRangeTestConfig(_Section):
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
            raise ValueError(f"eval_interval: {self.eval_interval} gives {self.iterations // self.eval_interval} "
                             f"accuracy point(s) over {self.iterations} iterations; linear_accuracy needs at least 3")
        if self.skip_start >= self.iterations:
            raise ValueError(f"skip_start: {self.skip_start} must be below iterations ({self.iterations})")
        if 1 / (1 - self.smoothing) > self.iterations / 2:
            # The EMA would lag most of the sweep and put the loss minimum at far too high an LR.
            raise ValueError(f"smoothing: {self.smoothing} averages over ~{1 / (1 - self.smoothing):.0f} steps, more than "
                             f"half of iterations ({self.iterations}); lower smoothing or raise iterations")
        return self


class TrainConfig(_Section):
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
    # Capture the whole training step (forward, backward, clipping, optimizer step) in a CUDA graph and replay it
    # (chargpt/cuda_graphs.py), and the evaluation forward too. CUDA only; off by default: on an H100 at T12 it
    # measured no faster than torch.compile alone (docs/gpu.md).
    cuda_graphs: bool = False
    # Divergence that stays finite: stop when an interval's mean train loss rises this many nats above the
    # first interval's (a val probe worse than a uniform guess, 8 bits per byte, stops it too).
    max_loss_rise: PositiveFloat = 1.0


class DynamicEvalConfig(_Section):
    """Dynamic evaluation (Krause et al. 2018): the model keeps learning on the text as it scores it. Windows are
    scored in order; after each `windows` of them, one optimizer step on those windows, so every byte is predicted
    by weights that saw only bytes before it."""

    lr: PositiveFloat = 1e-3
    optimizer: Literal["sgd", "adam"] = "adam"
    windows: PositiveInt = 1  # windows scored per update
    # Each window advances by `stride` bytes and scores its last `stride` (more context per byte, and an update per
    # `stride` bytes); null: the model's context (consecutive windows).
    stride: PositiveInt | None = None
    # Each update pulls the weights back towards the trained ones by this fraction (0: none).
    decay: Annotated[float, Field(ge=0, lt=1)] = 0.0


class EvalConfig(_Section):
    batch_size: PositiveInt = 16
    # Sliding-window scoring: each window advances by `stride` bytes and scores only its last `stride`
    # bytes, so each byte sees at least context - stride bytes of history. null: stride = context
    # (consecutive non-overlapping windows).
    stride: PositiveInt | None = None
    # Score only this many leading bytes of each split (a stated prefix, reported under its own metric
    # names); null: the whole split.
    max_bytes: PositiveInt | None = None
    # Also report val_bpc_dynamic / test_bpc_dynamic, scored with dynamic evaluation; null: static only.
    dynamic: DynamicEvalConfig | None = None


class RunConfig(_Section):
    name: str
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    lr_range_test: LRRangeTestConfig = LRRangeTestConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _cross_section(self) -> RunConfig:
        if self.eval.dynamic is not None and (self.eval.dynamic.stride or 0) > self.model.context:
            raise ValueError(f"eval.dynamic.stride: {self.eval.dynamic.stride} must not exceed model.context "
                             f"({self.model.context})")
        if self.eval.stride is not None and self.eval.stride > self.model.context:
            raise ValueError(f"eval.stride: {self.eval.stride} must not exceed model.context ({self.model.context})")
        if self.schedule.name == "cosine" and self.schedule.warmup_steps >= self.train.iterations:
            raise ValueError(f"schedule.warmup_steps: {self.schedule.warmup_steps} must be below train.iterations "
                             f"({self.train.iterations})")
        t = self.train
        if t.aux_losses and self.model.n_layer < 2:
            raise ValueError(f"train.aux_losses: needs intermediate layers, and model.n_layer is {self.model.n_layer}")
        if t.batch_size % (t.nproc * (t.micro_batch_size or 1)):
            raise ValueError(f"train.batch_size: {t.batch_size} must be a multiple of train.nproc ({t.nproc}) x "
                             f"train.micro_batch_size ({t.micro_batch_size})")
        if t.cuda_graphs and t.nproc > 1:
            raise ValueError(f"train.cuda_graphs: true cannot combine with train.nproc: {t.nproc} (DDP's all-reduce "
                             f"is not captured); set train.cuda_graphs: false")
        if t.cuda_graphs and t.precision == "fp16":
            raise ValueError("train.cuda_graphs: true cannot combine with train.precision: fp16 (the GradScaler decides "
                             "on the host whether to skip a step); set one of them otherwise")
        if self.lr_range_test.lr_end <= self.schedule.lr_min:
            raise ValueError(f"lr_range_test.lr_end: {self.lr_range_test.lr_end} must exceed schedule.lr_min "
                             f"({self.schedule.lr_min})")
        return self


def _deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _has_path(tree: Any, path: tuple) -> bool:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


@dataclass(frozen=True)
class Layer:
    key: str  # where in params.yaml these overrides are written
    overrides: dict  # by section
    names_value: bool = False  # key points at one value (a grid's axis value), not at a mapping of sections


@dataclass(frozen=True)
class RunSource:
    """Where a named run comes from in params.yaml: the top-level sections, then each layer of overrides in order
    (its base run's entry, then its own: a `runs.<name>` entry, or a grid's axis values)."""

    own_key: str  # the params.yaml entry that defines the run: runs.<name> or grids.<grid>
    base_key: str  # the entry of the run it builds on (runs.<base>); own_key where it builds on none
    layers: tuple[Layer, ...]

    def key_path(self, path: tuple) -> str:
        """Where to fix the value at `path` (section, key, ...): the last layer that sets it, else the default."""
        dotted = ".".join(str(p) for p in path)
        for layer in reversed(self.layers):
            if _has_path(layer.overrides, path):
                return f"{layer.key} ({dotted})" if layer.names_value else f"{layer.key}.{dotted}"
        return dotted


def _check_overrides(overrides: Any, where: str, source: str) -> dict:
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping of sections, got {overrides!r}")
    if "data" in overrides:
        raise ConfigError(f"{source}: {where}.data: the corpus and its split are shared by all runs; set data at the "
                          f"top level")
    bad = sorted(set(overrides) - set(RUN_SECTIONS))
    if bad:
        raise ConfigError(f"{source}: {where}: unknown section(s) {bad}; allowed: {list(RUN_SECTIONS)} (and base)")
    return overrides


def _grid_runs(name: str, grid: Any, runs: dict, source: str) -> dict[str, RunSource]:
    """A grid's runs: every combination of its axes' values, on its base run, named <grid>_<axis><label>_..."""
    where = f"grids.{name}"
    if not isinstance(grid, dict) or set(grid) != {"base", "axes"}:
        raise ConfigError(f"{source}: {where}: expected {{base: <run>, axes: {{<axis>: {{key: section.key, values: "
                          f"{{<label>: <value>, ...}}}}}}}}, got {grid!r}")
    base, axes = grid["base"], grid["axes"]
    if not isinstance(base, str) or base not in runs or "base" in (runs[base] or {}):
        raise ConfigError(f"{source}: {where}.base: {base!r} must be a run of runs without a base of its own; "
                          f"defined: {sorted(runs)}")
    if not isinstance(axes, dict) or not axes:
        raise ConfigError(f"{source}: {where}.axes: expected a non-empty mapping of axes, got {axes!r}")
    choices = []
    for axis, spec in axes.items():
        key = spec.get("key") if isinstance(spec, dict) else None
        if not isinstance(spec, dict) or set(spec) != {"key", "values"} or not isinstance(spec["values"], dict) \
                or not spec["values"] or not isinstance(key, str) or len(key.split(".")) != 2 \
                or key.split(".")[0] not in RUN_SECTIONS:
            raise ConfigError(f"{source}: {where}.axes.{axis}: expected {{key: section.key (a section of "
                              f"{list(RUN_SECTIONS)}), values: {{<label>: <value>, ...}}}}, got {spec!r}")
        section, field = key.split(".")
        choices.append([(f"{axis}{label}", Layer(f"{where}.axes.{axis}.values.{label}", {section: {field: value}}, True))
                        for label, value in spec["values"].items()])
    base_layer = Layer(f"runs.{base}", _check_overrides(runs[base] or {}, f"runs.{base}", source))
    return {"_".join([name, *(label for label, _ in combination)]):
            RunSource(where, f"runs.{base}", (base_layer, *(layer for _, layer in combination)))
            for combination in itertools.product(*choices)}


def run_sources(params: dict[str, Any], source: str = "params.yaml") -> dict[str, RunSource]:
    """Every named run, in order: params.yaml's runs, then the runs of each grid."""
    runs, grids = params["runs"], params.get("grids") or {}
    if not isinstance(grids, dict):
        raise ConfigError(f"{source}: grids: expected a mapping of grid name -> {{base, axes}}, got {grids!r}")
    out: dict[str, RunSource] = {}
    for name, entry in runs.items():
        entry = {} if entry is None else entry
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}: runs.{name}: expected a mapping of sections, got {entry!r}")
        own = Layer(f"runs.{name}", _check_overrides({k: v for k, v in entry.items() if k != "base"},
                                                     f"runs.{name}", source))
        if "base" not in entry:
            out[name] = RunSource(f"runs.{name}", f"runs.{name}", (own,))
            continue
        base = entry["base"]
        if not isinstance(base, str) or base == name or base not in runs:
            raise ConfigError(f"{source}: runs.{name}.base: {base!r} is not another run; defined: {sorted(runs)}")
        base_entry = runs[base] or {}
        if isinstance(base_entry, dict) and "base" in base_entry:
            raise ConfigError(f"{source}: runs.{name}.base: {base!r} builds on {base_entry['base']!r} itself; a base "
                              f"must be a run without a base (one level, so that DVC tracks both)")
        base_layer = Layer(f"runs.{base}", _check_overrides(base_entry, f"runs.{base}", source))
        out[name] = RunSource(f"runs.{name}", f"runs.{base}", (base_layer, own))
    for name, grid in grids.items():
        for run, run_source in _grid_runs(name, grid, runs, source).items():
            if run in out:
                raise ConfigError(f"{source}: grids.{name}: its run {run!r} is also defined under runs")
            out[run] = run_source
    return out


def _message(e: dict) -> str:
    """A pydantic error's own words: the validator's message without pydantic's "Value error, " prefix."""
    if e["type"] == "value_error" and "error" in e.get("ctx", {}):
        return str(e["ctx"]["error"])
    return e["msg"]


def _format_validation_error(err: ValidationError, run_source: RunSource | None) -> str:
    """One line: each problem as `<key path>: <what is wrong>`, the key path where the value is set."""
    problems = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if p != "")
        message = _message(e)
        # A validator names the key it refuses at the start of its message ("lr_min: ...", "train.nproc: ...").
        head, sep, rest = message.partition(": ")
        if sep and " " not in head and head.replace(".", "").replace("_", "").isalnum():
            loc, message = (*loc, *head.split(".")), rest
        path = run_source.key_path(loc) if run_source else ".".join(map(str, loc))
        if e["type"] == "extra_forbidden":
            problems.append(f"{path}: unknown key (typo?)")
        elif e["type"] in ("value_error", "assertion_error") or "input" not in e:
            problems.append(f"{path}: {message}")
        else:
            problems.append(f"{path}: {message} (got {e['input']!r})")
    return "; ".join(problems)


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTIONS) - {"runs", "grids"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; allowed: {[*SECTIONS, 'runs', 'grids']}")
    missing = [s for s in (*SECTIONS, "runs") if s not in raw]
    if missing:
        raise ConfigError(f"{path}: missing section(s) {missing}")
    if not isinstance(raw["runs"], dict) or not raw["runs"]:
        raise ConfigError(f"{path}: runs: expected a non-empty mapping of run name -> overrides")
    return raw


def resolve_run(params: dict[str, Any], run: str, source: str = "params.yaml",
                sources: dict[str, RunSource] | None = None) -> RunConfig:
    """The validated config of one named run: the top-level sections with its layers of overrides merged on top."""
    sources = sources if sources is not None else run_sources(params, source)
    if run not in sources:
        raise ConfigError(f"{source}: run {run!r} is not defined under runs or grids; defined: {sorted(sources)}")
    run_source = sources[run]
    merged = {s: params[s] for s in SECTIONS}
    for layer in run_source.layers:
        merged = _deep_merge(merged, layer.overrides)
    try:
        return RunConfig(name=run, **merged)
    except ValidationError as e:
        raise ConfigError(f"{source}: run {run!r}: {_format_validation_error(e, run_source)}") from None


def load_all_runs(path: str | Path = "params.yaml") -> dict[str, RunConfig]:
    """Every named run, validated: each stage calls this first so that a typo anywhere stops the stage."""
    params = load_params(path)
    sources = run_sources(params, str(path))
    return {run: resolve_run(params, run, str(path), sources) for run in sources}


def load_run_config(run: str, path: str | Path = "params.yaml") -> RunConfig:
    runs = load_all_runs(path)
    if run not in runs:
        raise ConfigError(f"{path}: run {run!r} is not defined under runs or grids; defined: {sorted(runs)}")
    return runs[run]


def load_data_config(path: str | Path = "params.yaml") -> DataConfig:
    return next(iter(load_all_runs(path).values())).data


def with_overrides(cfg: RunConfig, assignments: list[str]) -> RunConfig:
    """`section.key=value` assignments (the value parsed as YAML) applied on top of a run, re-validated:
    how the benchmark and the recipe sweep vary one run without editing params.yaml."""
    merged = cfg.model_dump(mode="json")
    for assignment in assignments:
        path, sep, text = assignment.partition("=")
        keys = path.strip().split(".")
        if not sep or len(keys) != 2 or keys[0] not in RUN_SECTIONS:
            raise ConfigError(f"override {assignment!r}: expected section.key=value with a section in {list(RUN_SECTIONS)}")
        section, key = keys
        if key not in merged[section]:
            raise ConfigError(f"override {assignment!r}: {section}.{key}: unknown key; known: {sorted(merged[section])}")
        merged[section][key] = yaml.safe_load(text)
    try:
        return RunConfig(**merged)
    except ValidationError as e:
        raise ConfigError(f"run {cfg.name!r} with overrides {assignments}: {_format_validation_error(e, None)}") from None


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}: a config as key paths (MLflow params, config differences)."""
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
