"""Model checkpoints: saved atomically, loaded with errors that name the file and what is wrong."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch.overrides import TorchFunctionMode

from chargpt.errors import CheckpointError
from chargpt.io import atomic_open, file_problem
from chargpt.model.config import ModelConfig
from chargpt.model.gpt import GPT
from chargpt.settings import flatten, format_validation_error

FORMAT_VERSION = 1


def _save(path: str | Path, obj: dict[str, Any]) -> None:
    with atomic_open(path, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as e:  # torch's zip writer wraps the OSError (disk full, …): surface it
            if isinstance(cause := e.__cause__ or e.__context__, OSError):
                raise cause from None
            raise


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: dict[str, Any], step: int, **extra: Any) -> None:
    _save(
        path, {"format_version": FORMAT_VERSION, "model": model.state_dict(), "config": config, "step": step, **extra}
    )


def load_file(path: Path, what: str, mmap: bool = False) -> Any:
    """torch.load of our own files: tensors and plain data only (weights_only), errors naming the file. mmap: the
    tensors are read only where used."""
    if (problem := file_problem(path)) is not None:
        raise CheckpointError(f"{path}: {what} {problem}" if problem == "not found" else f"{path}: {problem}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable {what} (truncated or corrupt?): {e}") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    state = load_file(path, "checkpoint")
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a chargpt checkpoint of format {FORMAT_VERSION}")
    return state


def available_memory() -> int:
    """Bytes this machine can still hand out (MemAvailable; where /proc is missing, the physical memory)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def stored_model_config(path: Path, state: dict[str, Any]) -> ModelConfig:
    """The model config a checkpoint holds, validated as params.yaml's model section is, in one line."""
    config = state.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{path}: holds no model config (config.model); not a model file chargpt wrote")
    if not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path}: holds no weights (model); not a model file chargpt wrote")
    try:
        return ModelConfig(**config["model"])
    except ValidationError as e:
        if unknown := [str(err["loc"][-1]) for err in e.errors() if err["type"] == "extra_forbidden"]:
            raise CheckpointError(
                f"{path}: its model config is invalid: {', '.join(f'{k}: unknown key' for k in unknown)} (written by "
                f"an older chargpt? `python tools/upgrade_files.py OLD NEW` writes a copy this version reads)"
            ) from None
        raise CheckpointError(f"{path}: its model config is invalid: {format_validation_error(e)}") from None


class _NoRandomInit(TorchFunctionMode):
    """Random initialisation does nothing: a skeleton's shapes are all that is read of it, and normal_ on the meta
    device imports torch._dynamo (a second and more of every command that loads a model)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.nn.init.normal_, torch.Tensor.normal_):
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def check_weights_fit(path: Path, cfg: ModelConfig, weights: dict[str, Any]) -> None:
    """Every tensor the config implies is in `weights` with its shape, and nothing else: checked on the meta device
    (no memory), and the model must fit in this machine's memory, before a byte of it is allocated."""
    with torch.device("meta"), _NoRandomInit():
        skeleton = GPT(cfg)
    wanted = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    got = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__ for k, v in weights.items()}
    problems = [f"{k} missing" for k in wanted if k not in got]
    problems += [f"{k} not in this model" for k in got if k not in wanted]
    problems += [f"{k}: expected {wanted[k]}, file has {got[k]}" for k in wanted if k in got and got[k] != wanted[k]]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise CheckpointError(f"{path}: weights do not fit the model config stored with them: {shown}")
    size = sum(p.numel() * p.element_size() for p in skeleton.parameters())
    if size > (free := available_memory()):
        raise CheckpointError(
            f"{path}: its model needs {size / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB this machine "
            f"has free"
        )


def load_model(path: str | Path, expected: ModelConfig | None = None) -> tuple[GPT, dict[str, Any]]:
    """The model stored at `path`; if `expected` is given, its shape must match the stored one. The file is checked
    before the model is built: its config validated, every weight's shape against the config, and the size."""
    path = Path(path)
    state = load_checkpoint(path)
    stored = stored_model_config(path, state)
    if expected is not None:
        diff = {
            k: (v, getattr(stored, k))
            for k, v in expected.model_dump().items()
            if k != "dropout" and getattr(stored, k) != v
        }
        if diff:
            listed = ", ".join(f"{k}: expected {want}, checkpoint has {got}" for k, (want, got) in diff.items())
            raise CheckpointError(f"{path}: checkpoint is from another model shape ({listed})")
    check_weights_fit(path, stored, state["model"])
    model = GPT(stored)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model config stored with them: {e}") from None
    if "dynamic_rms" in state:
        check_rms_fits(path, model, state["dynamic_rms"])
    return model, state


def check_rms_fits(path: Path, model: GPT, rms: Any) -> None:
    """dynamic_rms, the RMS of the training gradients (the train stage's), holds one finite, non-negative fp32 tensor
    per parameter, of its shape."""
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    if not isinstance(rms, dict) or rms.keys() != shapes.keys():
        got = sorted(rms)[:3] if isinstance(rms, dict) else type(rms).__name__
        raise CheckpointError(f"{path}: dynamic_rms: expected one tensor per parameter ({len(shapes)}), got {got}")
    for name, r in rms.items():
        if not isinstance(r, torch.Tensor) or r.dtype != torch.float32 or tuple(r.shape) != shapes[name]:
            got = f"{r.dtype} {tuple(r.shape)}" if isinstance(r, torch.Tensor) else type(r).__name__
            raise CheckpointError(f"{path}: dynamic_rms.{name}: expected float32 {shapes[name]}, got {got}")
        if not bool(torch.isfinite(r).all() and (r >= 0).all()):
            raise CheckpointError(f"{path}: dynamic_rms.{name}: expected finite values >= 0")


def needed_rms(model_file: str | Path, stored: dict | None, optimizer: str | None) -> dict | None:
    """The model file's dynamic_rms where dynamic evaluation's `optimizer` is rms (None otherwise)."""
    if optimizer != "rms":
        return None
    if stored is None:
        raise CheckpointError(
            f"{model_file}: holds no dynamic_rms (the RMS of its training gradients), which eval.dynamic's rms update "
            f"needs: the train stage stores it since this version; train the model again, or use optimizer sgd"
        )
    return stored


# Keys that may change between an interrupted session and its resumption without changing the run.
RESUMABLE_CHANGES = (
    "train.checkpoint_every",
    "train.threads",
    "train.device",
    "train.compile",
    "train.cuda_graphs",
    "eval.",
)


def config_differences(saved: dict, current: dict) -> list[str]:
    """The keys whose values differ (a key one of them lacks: None there)."""
    a, b = flatten(saved), flatten(current)
    return [
        f"{k}: checkpoint {a.get(k)!r}, now {b.get(k)!r}"
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k) and not k.startswith(RESUMABLE_CHANGES)
    ]


def rng_states(sampler_generator: torch.Generator) -> dict[str, Any]:
    import random

    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    # As tensors and plain numbers, so that the state loads with torch.load(weights_only=True).
    states = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "sampler": sampler_generator.get_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any], sampler_generator: torch.Generator) -> None:
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    random.setstate(states["python"])
    sampler_generator.set_state(states["sampler"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete what writes of `path` left behind when killed mid-save (atomic_open's temporary files beside it)."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def save_training_state(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler | None,
    sampler_generator: torch.Generator,
    config: dict[str, Any],
    loop: dict[str, Any],
    resolved: dict[str, Any] | None = None,
    **extra: Any,
) -> None:
    """Everything a resumed run needs to continue bit for bit; written atomically. `resolved`: what the config left to
    the machine (the precision `auto` gave, the steps that follow from it), which a resumed run must resolve alike."""
    _save(
        path,
        {
            "format_version": FORMAT_VERSION,
            "kind": "training_state",
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "config": config,
            "loop": loop,
            "rng": rng_states(sampler_generator),
            "resolved": resolved,
            **extra,
        },
    )


def saved_run_id(path: str | Path) -> str | None:
    """The MLflow run a training state names, read without its tensors (before a resumed run is built)."""
    state = load_file(Path(path), "training state", mmap=True)
    return state.get("mlflow_run_id") if isinstance(state, dict) else None


def restore_training_state(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler | None,
    sampler_generator: torch.Generator,
    config: dict[str, Any],
    resolved: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load a training state saved by save_training_state into the given objects; returns the whole state.
    Refuses a state written for a different config, or whose config the machine resolved otherwise."""
    path = Path(path)
    state = load_file(path, "training state")
    if not isinstance(state, dict) or state.get("kind") != "training_state":
        raise CheckpointError(f"{path}: not a chargpt training state")
    if diff := config_differences(state["config"], config):
        known = flatten(config)
        older = any(k.split(":")[0] not in known for k in diff)  # a key this version does not know
        raise CheckpointError(
            f"{path}: written by a run with another config ({'; '.join(diff)}); refusing to mix "
            f"runs. Start over with --fresh, or delete {path.parent}"
            + (
                " (written by an older chargpt? `python tools/upgrade_files.py OLD NEW` writes a copy this version "
                "resumes)"
                if older
                else ""
            )
        )
    saved_resolved = state.get("resolved") or {}  # none in states written before it was recorded
    if resolved and (diff := [f"{k}: checkpoint {v!r}, now {resolved.get(k)!r}" for k, v in saved_resolved.items()
                              if resolved.get(k) != v]):  # fmt: skip
        raise CheckpointError(
            f"{path}: its run resolved the config otherwise on the machine it started on ({'; '.join(diff)}; "
            f"train.precision: auto follows the machine); refusing to mix them. Set train.precision to "
            f"{saved_resolved.get('precision')!r} to continue it as it started, start over with --fresh, or delete "
            f"{path.parent}"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    set_rng_states(state["rng"], sampler_generator)
    return state
