"""Using a trained model: load it from a run or a checkpoint file, and sample bytes from it.

Sampling feeds each new byte through the model once (a KV cache holds the window's earlier positions). The
positional embeddings are learned per absolute position, so the cache cannot slide by one: when the window is
full, it restarts from the last half of it (one forward pass over those bytes), so each byte sees at least
context / 2 bytes of history and at most context - 1.
"""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path

import torch

from chargpt.errors import CheckpointError, ConfigError
from chargpt.io import file_problem
from chargpt.model.gpt import GPT
from chargpt.pipeline.dvc_status import locked_stages
from chargpt.pipeline.stage import model_path
from chargpt.train.checkpoint import load_model


def checkpoint_path(run: str | None, checkpoint: str | Path | None, root: Path = Path(".")) -> Path:
    """models/<run>/model.pt of the project at `root`, or the checkpoint file given."""
    if checkpoint is not None:
        return Path(checkpoint)
    path = root / model_path(run)
    if (problem := file_problem(path)) not in (None, "not found"):
        raise CheckpointError(f"{path}: {problem}; run {run!r}'s model is the file its train stage writes")
    if problem == "not found":
        defined = _defined_runs(root / "params.yaml")
        if defined is not None and run not in defined:
            close = difflib.get_close_matches(run, defined, n=1)
            raise CheckpointError(
                f"run {run!r} is not defined in {root / 'params.yaml'}"
                + (f"; did you mean {close[0]!r}?" if close else f"; defined: {sorted(defined)}")
            )
        if (root / "dvc.yaml").is_file() and f"train@{run}" not in locked_stages(root):
            raise CheckpointError(
                f"{path}: not found, and {root / 'dvc.lock'} records no train@{run}, so `dvc pull` cannot fetch it: "
                f"train it here (dvc repro train@{run}), or have the clone that trained it commit and push what names "
                f"it (git add dvc.lock params.yaml reports data; git commit; git push, beside dvc push), then git "
                f"pull and dvc pull train@{run}"
            )
        raise CheckpointError(
            f"{path}: not found: run {run!r} has not been trained here. Train it (dvc repro "
            f"train@{run}) or fetch it from the DVC remote (dvc pull train@{run})"
        )
    return path


def _defined_runs(params: Path) -> list[str] | None:
    """The named runs of a project's params.yaml, or None where there is none to read."""
    from chargpt.pipeline.config import load_params, run_sources

    if not params.is_file():
        return None
    try:
        return list(run_sources(load_params(params)))
    except ConfigError:
        return None


def load_trained(path: Path) -> GPT:
    model, _ = load_model(path)
    return model.eval()


def load_adaptable(path: Path) -> tuple[GPT, dict | None]:
    """The model, and the RMS of its training gradients where the file holds them (dynamic evaluation's rms update)."""
    model, state = load_model(path)
    return model.eval(), state.get("dynamic_rms")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@torch.inference_mode()
def sample(
    model: GPT, prompt: bytes, n_bytes: int, temperature: float = 1.0, top_k: int | None = None, seed: int = 0
) -> bytes:
    """`n_bytes` bytes following `prompt` (at least one byte), drawn from the model's next-byte distributions."""
    if not prompt:
        raise ValueError("the prompt must hold at least one byte (the model predicts each byte from earlier ones)")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    generator = torch.Generator().manual_seed(seed)
    context = model.cfg.context
    history = list(prompt[-context:])
    cache = model.new_cache()
    logits = model(torch.tensor([history]), cache=cache)[0][0, -1]  # (vocab,)
    out = bytearray()
    for _ in range(n_bytes):
        logits = logits.float() / temperature
        if top_k is not None and top_k < logits.numel():
            kth = torch.topk(logits, top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        byte = int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))
        out.append(byte)
        history.append(byte)
        if cache.length == context:  # the window is full: restart it from its last half
            history = history[-(context // 2) :]
            cache = model.new_cache()
            logits = model(torch.tensor([history]), cache=cache)[0][0, -1]
        else:
            logits = model(torch.tensor([[byte]]), cache=cache)[0][0, -1]
    return bytes(out)
