"""Model checkpoints: saved atomically, loaded with errors that name the file and what is wrong."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from chargpt.errors import CheckpointError
from chargpt.io import atomic_open
from chargpt.model.config import ModelConfig
from chargpt.model.gpt import GPT
from chargpt.settings import flatten

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


def _load(path: Path, what: str) -> Any:
    """torch.load of our own files: tensors and plain data only (weights_only), errors naming the file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable {what} (truncated or corrupt?): {e}") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    state = _load(path, "checkpoint")
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a chargpt checkpoint of format {FORMAT_VERSION}")
    return state


def load_model(path: str | Path, expected: ModelConfig | None = None) -> tuple[GPT, dict[str, Any]]:
    """The model stored at `path`; if `expected` is given, its shape must match the stored one."""
    state = load_checkpoint(path)
    stored = ModelConfig(**state["config"]["model"])
    if expected is not None:
        diff = {
            k: (v, getattr(stored, k))
            for k, v in expected.model_dump().items()
            if k != "dropout" and getattr(stored, k) != v
        }
        if diff:
            listed = ", ".join(f"{k}: expected {want}, checkpoint has {got}" for k, (want, got) in diff.items())
            raise CheckpointError(f"{path}: checkpoint is from another model shape ({listed})")
    model = GPT(stored)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model config stored with them: {e}") from None
    return model, state


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
    **extra: Any,
) -> None:
    """Everything a resumed run needs to continue bit for bit; written atomically."""
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
            **extra,
        },
    )


def restore_training_state(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler | None,
    sampler_generator: torch.Generator,
    config: dict[str, Any],
) -> dict[str, Any]:
    """Load a training state saved by save_training_state into the given objects; returns the whole state.
    Refuses a state written for a different config."""
    path = Path(path)
    state = _load(path, "training state")
    if not isinstance(state, dict) or state.get("kind") != "training_state":
        raise CheckpointError(f"{path}: not a chargpt training state")
    if diff := config_differences(state["config"], config):
        raise CheckpointError(
            f"{path}: written by a run with another config ({'; '.join(diff)}); refusing to mix "
            f"runs. Start over with --fresh, or delete {path.parent}"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    set_rng_states(state["rng"], sampler_generator)
    return state
