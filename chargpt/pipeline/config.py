"""A named run's configuration: params.yaml's sections (each a pydantic model that lives with its owner:
chargpt.data.config, chargpt.model.config, chargpt.train.config, chargpt.evaluation.config), validated once at the
stage boundary.

A named run is the shared defaults with the run's overrides deep-merged on top (`runs.<name>` in params.yaml, on
the run it builds on, or a grid's axis values). Library functions take the narrow section they need, never the raw
YAML dict.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, ValidationError, model_validator

from chargpt.data.config import DataConfig, parse_yaml, read_params
from chargpt.errors import ConfigError
from chargpt.evaluation.config import EvalConfig
from chargpt.model.config import ModelConfig
from chargpt.settings import Section, format_validation_error, quote
from chargpt.train.config import LRRangeTestConfig, OptimizerConfig, ScheduleConfig, TrainConfig

SECTIONS = ("data", "model", "optimizer", "schedule", "lr_range_test", "train", "eval")
RUN_SECTIONS = SECTIONS[1:]  # what a named run may override

# A run's name becomes a directory (models/<run>, reports/<run>, checkpoints/<run>, which train removes) and a word
# in the commands DVC runs through a shell (--run ${key}): so ASCII letters, digits, `_`, `.` and `-` only, starting
# with a letter or digit (no `..`, no `/`, nothing a shell or a page reads as syntax).
RUN_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}"
_RUN_NAME = re.compile(RUN_NAME_PATTERN)


def check_run_name(name: object, where: str) -> str:
    """`name` where it is a valid run name; else a ConfigError in one line saying where it is written."""
    if not isinstance(name, str) or not _RUN_NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: run name {name!r} is not allowed: a run name matches {RUN_NAME_PATTERN} (letters, digits, "
            f"_ . -, starting with a letter or digit, at most 100 characters), since it becomes a directory and a "
            f"word of the commands DVC runs"
        )
    return name


def run_name_argument(text: str) -> str:
    """argparse's type for --run: the same rule, as a usage error that names the argument."""
    try:
        return check_run_name(text, "--run")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--run: ")) from None


class RunConfig(Section):
    name: Annotated[str, Field(pattern=f"^{RUN_NAME_PATTERN}$")]
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    lr_range_test: LRRangeTestConfig = LRRangeTestConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    def training_sections(self) -> dict[str, Any]:
        """What chargpt.train.run.build_training_run takes of the config: the sections it needs, the val probe's
        batch, and the whole config as a training state saves it."""
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "schedule": self.schedule,
            "train": self.train,
            "probe_batch_size": self.eval.batch_size,
            "config": self.model_dump(mode="json"),
        }

    @model_validator(mode="after")
    def _cross_section(self) -> RunConfig:
        if self.eval.dynamic is not None and (self.eval.dynamic.stride or 0) > self.model.context:
            raise ValueError(
                f"eval.dynamic.stride: {self.eval.dynamic.stride} must not exceed model.context ({self.model.context})"
            )
        if self.eval.stride is not None and self.eval.stride > self.model.context:
            raise ValueError(f"eval.stride: {self.eval.stride} must not exceed model.context ({self.model.context})")
        fewest = self.train.steps(None)  # in fp32 (fewer where train.fp32_iterations_fraction applies)
        if self.schedule.name == "cosine" and self.schedule.warmup_steps >= fewest:
            raise ValueError(
                f"schedule.warmup_steps: {self.schedule.warmup_steps} must be below the steps trained ({fewest}: "
                f"train.iterations, times train.fp32_iterations_fraction in fp32)"
            )
        t = self.train
        if t.aux_losses and self.model.n_layer < 2:
            raise ValueError(f"train.aux_losses: needs intermediate layers, and model.n_layer is {self.model.n_layer}")
        t.accumulation_steps(t.nproc)  # batch_size splits over the processes and micro-batches
        if t.cuda_graphs and t.nproc > 1:
            raise ValueError(
                f"train.cuda_graphs: true cannot combine with train.nproc: {t.nproc} (DDP's all-reduce "
                f"is not captured); set train.cuda_graphs: false"
            )
        if t.cuda_graphs and t.compile is False:
            raise ValueError(
                "train.cuda_graphs: true is torch.compile's reduce-overhead mode, and train.compile is false; "
                "set train.compile: auto (or true), or train.cuda_graphs: false"
            )
        if self.lr_range_test.lr_end <= self.schedule.lr_min:
            raise ValueError(
                f"lr_range_test.lr_end: {self.lr_range_test.lr_end} must exceed schedule.lr_min "
                f"({self.schedule.lr_min})"
            )
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
    is_axis_value: bool = False  # key points at one value (a grid's axis value), not at a mapping of sections


@dataclass(frozen=True)
class RunSource:
    """Where a named run comes from in params.yaml: the top-level sections, then each layer of overrides in order
    (its base run's entry, then its own: a `runs.<name>` entry, or a grid's axis values)."""

    own_key: str  # the params.yaml entry that defines the run: runs.<name> or grids.<grid>
    base_key: str  # the entry of the run it builds on (runs.<base>); own_key where it builds on none
    layers: tuple[Layer, ...]
    root_key: str = ""  # the first run of its chain of bases (runs.<root>); base_key where the base has none

    def __post_init__(self):
        if not self.root_key:
            object.__setattr__(self, "root_key", self.base_key)

    def key_path(self, path: tuple) -> str:
        """Where to fix the value at `path` (section, key, ...): the last layer that sets it, else the default."""
        dotted = ".".join(str(p) for p in path)
        for layer in reversed(self.layers):
            if _has_path(layer.overrides, path):
                return f"{layer.key} ({dotted})" if layer.is_axis_value else f"{layer.key}.{dotted}"
        return dotted


def _check_overrides(overrides: Any, where: str, source: str) -> dict:
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping of sections, got {quote(overrides)}")
    if "data" in overrides:
        raise ConfigError(
            f"{source}: {where}.data: the corpus and its split are shared by all runs; set data at the top level"
        )
    bad = sorted(set(overrides) - set(RUN_SECTIONS))
    if bad:
        raise ConfigError(f"{source}: {where}: unknown section(s) {bad}; allowed: {list(RUN_SECTIONS)} (and base)")
    return overrides


def _grid_runs(name: str, grid: Any, runs: dict, source: str) -> dict[str, RunSource]:
    """A grid's runs: every combination of its axes' values, on its base run, named <grid>_<axis><label>_..."""
    where = f"grids.{name}"
    if not isinstance(grid, dict) or set(grid) != {"base", "axes"}:
        raise ConfigError(
            f"{source}: {where}: expected {{base: <run>, axes: {{<axis>: {{key: section.key, values: "
            f"{{<label>: <value>, ...}}}}}}}}, got {quote(grid)}"
        )
    base, axes = grid["base"], grid["axes"]
    if not isinstance(base, str) or base not in runs:
        raise ConfigError(f"{source}: {where}.base: {quote(base)} must be a run of runs; defined: {sorted(runs)}")
    chain = _chain(base, runs, source)
    if len(chain) > MAX_CHAIN - 1:  # the grid's own values make one more layer
        raise ConfigError(f"{source}: {where}.base: {quote(base)} builds on a chain of {len(chain)} runs; a grid's "
                          f"base may build on one run at most, so that DVC tracks each")  # fmt: skip
    if not isinstance(axes, dict) or not axes:
        raise ConfigError(f"{source}: {where}.axes: expected a non-empty mapping of axes, got {quote(axes)}")
    choices = []
    for axis, spec in axes.items():
        key = spec.get("key") if isinstance(spec, dict) else None
        if (
            not isinstance(spec, dict)
            or set(spec) != {"key", "values"}
            or not isinstance(spec["values"], dict)
            or not spec["values"]
            or not isinstance(key, str)
            or len(key.split(".")) != 2
            or key.split(".")[0] not in RUN_SECTIONS
        ):
            raise ConfigError(
                f"{source}: {where}.axes.{axis}: expected {{key: section.key (a section of "
                f"{list(RUN_SECTIONS)}), values: {{<label>: <value>, ...}}}}, got {quote(spec)}"
            )
        section, field = key.split(".")
        choices.append(
            [
                (f"{axis}{label}", Layer(f"{where}.axes.{axis}.values.{label}", {section: {field: value}}, True))
                for label, value in spec["values"].items()
            ]
        )
    base_layers = _layers(chain, runs, source)
    return {
        "_".join([name, *(label for label, _ in combination)]): RunSource(
            where, f"runs.{base}", (*base_layers, *(layer for _, layer in combination)), f"runs.{chain[0]}"
        )
        for combination in itertools.product(*choices)
    }


MAX_CHAIN = 3  # runs in a chain of bases: a variant, its base, the base's base (dvc.yaml tracks each: own, base, root)


def _chain(name: str, runs: dict, source: str) -> list[str]:
    """The runs `name` builds on, the first of the chain first and `name` last."""
    chain = [name]
    while isinstance(runs[chain[-1]], dict) and "base" in runs[chain[-1]]:
        base = runs[chain[-1]]["base"]
        if not isinstance(base, str) or base == chain[-1] or base not in runs:
            raise ConfigError(
                f"{source}: runs.{chain[-1]}.base: {quote(base)} is not another run; defined: {sorted(runs)}"
            )
        if base in chain:
            raise ConfigError(f"{source}: runs.{chain[-1]}.base: {quote(base)} closes a loop of bases "
                              f"({' -> '.join([*chain, base])})")  # fmt: skip
        chain.append(base)
    if len(chain) > MAX_CHAIN:
        raise ConfigError(
            f"{source}: runs.{name}.base: a chain of {len(chain)} runs ({' -> '.join(chain)}); at most {MAX_CHAIN}, "
            f"so that DVC tracks each: build on a run nearer the start"
        )
    return chain[::-1]


def _layers(chain: list[str], runs: dict, source: str) -> tuple[Layer, ...]:
    """Each run's own overrides (without its `base:`), in the chain's order."""
    return tuple(
        Layer(
            f"runs.{run}",
            _check_overrides({k: v for k, v in (runs[run] or {}).items() if k != "base"}, f"runs.{run}", source),
        )  # fmt: skip
        for run in chain
    )


def run_sources(params: dict[str, Any], source: str = "params.yaml") -> dict[str, RunSource]:
    """Every named run, in order: params.yaml's runs, then the runs of each grid."""
    runs, grids = params["runs"], params.get("grids") or {}
    if not isinstance(grids, dict):
        raise ConfigError(f"{source}: grids: expected a mapping of grid name -> {{base, axes}}, got {quote(grids)}")
    for name, entry in runs.items():  # every entry, before any chain of bases reads one
        check_run_name(name, f"{source}: runs")
        if entry is not None and not isinstance(entry, dict):
            raise ConfigError(f"{source}: runs.{name}: expected a mapping of sections, got {quote(entry)}")
    out: dict[str, RunSource] = {}
    for name in runs:
        chain = _chain(name, runs, source)
        out[name] = RunSource(f"runs.{name}", f"runs.{chain[-2 if len(chain) > 1 else -1]}",
                              _layers(chain, runs, source), f"runs.{chain[0]}")  # fmt: skip
    for name, grid in grids.items():
        check_run_name(name, f"{source}: grids")  # the first word of each of its runs' names
        for run, run_source in _grid_runs(name, grid, runs, source).items():
            check_run_name(run, f"{source}: grids.{name}")
            if run in out:
                raise ConfigError(f"{source}: grids.{name}: its run {run!r} is also defined under runs")
            out[run] = run_source
    return out


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    raw = read_params(path)
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


def resolve_run(
    params: dict[str, Any], run: str, source: str = "params.yaml", sources: dict[str, RunSource] | None = None
) -> RunConfig:
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
        raise ConfigError(f"{source}: run {run!r}: {format_validation_error(e, run_source.key_path)}") from None


def load_all_runs(path: str | Path = "params.yaml") -> dict[str, RunConfig]:
    """Every named run, validated: each stage calls this first so that a typo anywhere stops the stage."""
    params = load_params(path)
    sources = run_sources(params, str(path))
    return {run: resolve_run(params, run, str(path), sources) for run in sources}


def check_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chargpt check",
        description="Validate every named run of params.yaml (runs and grids), as each stage does first: one line "
        "naming the key path where a value is wrong. The download stage runs it before fetching, so that a fresh "
        "pipeline reports a bad run at once, while the data stages depend on no run's params.",
    )
    parser.add_argument("--params", default="params.yaml")
    return parser


def check_main(argv: list[str] | None = None) -> None:
    args = check_parser().parse_args(argv)
    print(f"{args.params}: {len(load_all_runs(args.params))} runs, each valid")


def load_run_config(run: str, path: str | Path = "params.yaml") -> RunConfig:
    runs = load_all_runs(path)
    if run not in runs:
        raise ConfigError(f"{path}: run {run!r} is not defined under runs or grids; defined: {sorted(runs)}")
    return runs[run]


def with_overrides(cfg: RunConfig, assignments: list[str]) -> RunConfig:
    """`section.key=value` assignments (the value parsed as YAML) applied on top of a run, re-validated:
    how the benchmark and the recipe sweep vary one run without editing params.yaml."""
    merged = cfg.model_dump(mode="json")
    for assignment in assignments:
        path, sep, text = assignment.partition("=")
        keys = path.strip().split(".")
        if not sep or len(keys) != 2 or keys[0] not in RUN_SECTIONS:
            raise ConfigError(
                f"override {assignment!r}: expected section.key=value with a section in {list(RUN_SECTIONS)}"
            )
        section, key = keys
        if key not in merged[section]:
            raise ConfigError(
                f"override {assignment!r}: {section}.{key}: unknown key; known: {sorted(merged[section])}"
            )
        try:
            merged[section][key] = parse_yaml(text)
        except (yaml.YAMLError, RecursionError) as e:
            raise ConfigError(f"override {assignment!r}: not a YAML value: {' '.join(str(e).split())}") from None
    try:
        return RunConfig(**merged)
    except ValidationError as e:
        raise ConfigError(f"run {cfg.name!r} with overrides {assignments}: {format_validation_error(e)}") from None
