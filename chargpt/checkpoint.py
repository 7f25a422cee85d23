"""Model checkpoints: saved atomically, loaded with errors that name the file and what is wrong."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from chargpt.config import ModelConfig
from chargpt.io import atomic_open
from chargpt.model import GPT

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: dict[str, Any], step: int, **extra: Any) -> None:
    state = {"format_version": FORMAT_VERSION, "model": model.state_dict(), "config": config, "step": step, **extra}
    with atomic_open(path, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {e}") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a chargpt checkpoint of format {FORMAT_VERSION}")
    return state


def load_model(path: str | Path, expected: ModelConfig | None = None) -> tuple[GPT, dict[str, Any]]:
    """The model stored at `path`; if `expected` is given, its shape must match the stored one."""
    state = load_checkpoint(path)
    stored = ModelConfig(**state["config"]["model"])
    if expected is not None:
        diff = {k: (v, getattr(stored, k)) for k, v in expected.model_dump().items()
                if k != "dropout" and getattr(stored, k) != v}
        if diff:
            listed = ", ".join(f"{k}: expected {want}, checkpoint has {got}" for k, (want, got) in diff.items())
            raise CheckpointError(f"{path}: checkpoint is from another model shape ({listed})")
    model = GPT(stored)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model config stored with them: {e}") from None
    return model, state
