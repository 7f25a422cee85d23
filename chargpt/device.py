"""What the hardware offers: native bf16, the autocast dtype a run uses (its `amp_dtype`), the name of a device.
Imports no chargpt module.

Precision by device (`train.precision: auto`):
- CUDA of compute capability >= 8.0 (A100, H100, L4, RTX 30xx and later): bf16 autocast;
- CUDA below 8.0 (T4, V100, P100): fp16 autocast with a GradScaler, since they have fp16 tensor cores but no
  bf16 ones (torch emulates bf16 there);
- a CPU: bf16 only where bf16 matmul is native (avx512_bf16 / amx_bf16), else fp32.
Weights and optimizer state stay fp32 in every case.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@functools.cache
def cpu_info() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_has_native_bf16() -> bool:
    flags = cpu_info().get("flags", "").split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cuda_has_bf16_tensor_cores(device: torch.device) -> bool:
    # Not torch.cuda.is_bf16_supported(): it also says yes where bf16 is only emulated (T4, V100).
    return torch.cuda.get_device_capability(device) >= (8, 0)


def has_native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively on `device` (elsewhere they are emulated, far slower than fp32)."""
    return cuda_has_bf16_tensor_cores(device) if device.type == "cuda" else cpu_has_native_bf16()


def resolve_amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The amp_dtype of `precision` (auto | bf16 | fp16 | fp32) on `device`: what autocast lowers matmuls to,
    or None for plain fp32."""
    if precision != "auto":
        return DTYPES[precision]
    if device.type == "cuda":
        return torch.bfloat16 if cuda_has_bf16_tensor_cores(device) else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def precision_name(amp_dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype, "fp32")


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """The one autocast helper: autocast to `amp_dtype` on `device`; a no-op for None (fp32)."""
    return torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None)


def describe(device: torch.device) -> str:
    """How messages, tags and tables name a device: the GPU's name, or the CPU's model."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def cpu_model() -> str:
    return cpu_info().get("model name", "cpu")
