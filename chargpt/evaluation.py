"""Bits per character over a whole split.

Protocol: byte j of a split (j = 1 .. N-1) is predicted from the bytes before it within one window of at
most `context` bytes; every such byte is scored exactly once (byte 0 has no context and is not scored).
With stride = context the windows are consecutive and non-overlapping. With a smaller stride, each window
after the first advances by `stride` bytes and scores only its last `stride` bytes, so every byte past the
first window sees at least context - stride bytes of history (sliding-window evaluation).
"""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from tqdm import tqdm

LN2 = math.log(2)


def window_plan(n: int, context: int, stride: int) -> list[tuple[int, int]]:
    """(input start, number of scored positions) per window; each input is data[start : start + T]
    with T = min(context, n - 1), and scores its last positions."""
    if n < 2:
        raise ValueError(f"a split of {n} byte(s) has nothing to score")
    T = min(context, n - 1)
    plan = [(0, T)]  # the first window scores all of its T targets (bytes 1..T)
    scored_end = T + 1  # exclusive: bytes [1, scored_end) are scored
    while scored_end < n:
        end = min(scored_end + stride, n)  # score bytes [scored_end, end)
        plan.append((end - 1 - T, end - scored_end))
        scored_end = end
    return plan


@torch.inference_mode()
def split_bpc(
    model: torch.nn.Module,
    data: torch.Tensor,
    context: int,
    batch_size: int,
    stride: int | None = None,
    device: torch.device = torch.device("cpu"),
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> tuple[float, int]:
    """(bits per byte, bytes scored) of `model` on the flat uint8 tensor `data`."""
    plan = window_plan(len(data), context, stride or context)
    T = min(context, len(data) - 1)
    offsets = torch.arange(T + 1)
    was_training = model.training
    model.eval()
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    batches = range(0, len(plan), batch_size)
    for i in tqdm(batches, desc="eval", disable=not progress, mininterval=1.0):
        starts = torch.tensor([s for s, _ in plan[i:i + batch_size]])
        n_scored = torch.tensor([k for _, k in plan[i:i + batch_size]])
        chunk = data[starts[:, None] + offsets].long().to(device)  # (B, T+1)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            logits, _ = model(chunk[:, :-1])  # (B, T, vocab)
        # float64: over millions of bytes the BPC must not drift by fp32 rounding (a uniform model scores 8.0)
        nats = F.cross_entropy(logits.double().transpose(1, 2), chunk[:, 1:], reduction="none")  # (B, T)
        scored = torch.arange(T)[None, :] >= (T - n_scored)[:, None]  # last n_scored positions of each row
        total_nats += nats[scored.to(device)].sum(dtype=torch.float64)
    model.train(was_training)
    n_bytes = len(data) - 1
    return total_nats.item() / (n_bytes * LN2), n_bytes

