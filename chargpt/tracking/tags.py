"""What a run records about where it ran: the code's git commit, the data's checksums, the hardware."""

from __future__ import annotations

import os
import subprocess

import torch

from chargpt.device import describe
from chargpt.tracking.connection import project_root

# How a run's own figures (val_bpc, test_bpc) were scored, e.g. "stride 32 of context 128, bf16"; the *_ref figures
# beside them are always consecutive windows (chargpt.evaluation.config.REFERENCE).
PROTOCOL_TAG = "chargpt.protocol"


def git_tags() -> dict[str, str]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=project_root())
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {}
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"mlflow.source.git.commit": commit, "git_commit": commit, "git_dirty": str(dirty).lower()}


def data_tags(meta: dict | None) -> dict[str, str]:
    """The sha256 of each split the run trained and was scored on (data/processed/meta.json)."""
    if not meta:
        return {}
    return {f"data.{name}_sha256": split["sha256"] for name, split in meta.get("splits", {}).items()}


def hardware(device: torch.device) -> str:
    """What a run's speed depends on: the GPU's name, or the CPU's model and torch's thread count."""
    if device.type == "cuda":
        return f"{describe(device)} x {max(1, int(os.environ.get('WORLD_SIZE', 1)))}"
    threads = torch.get_num_threads()
    return f"{describe(device)}, {threads} thread{'s' if threads != 1 else ''}"


def run_tags(
    run_name: str, stage: str, device: torch.device, data_meta: dict | None = None, fallback_from: str | None = None
) -> dict[str, str]:
    """A new run's tags; `fallback_from`: the tracking server it could not reach (Connection.fallback_from)."""
    fallback = {"tracking_fallback_from": fallback_from} if fallback_from else {}
    return {
        "chargpt.run": run_name,
        "dvc_stage": stage,
        "device": device.type,
        "hardware": hardware(device),
        "torch_version": torch.__version__,
        **git_tags(),
        **data_tags(data_meta),
        **fallback,
    }
