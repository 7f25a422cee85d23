"""The time limit a training run or range test keeps on this machine, estimated from its first steps."""

from __future__ import annotations

import time

import torch

from chargpt.errors import RunTooLong


class StepTimer:
    """The time limit: times this session's steps 2 to 4 (the first pays for compilation and allocation) and
    raises RunTooLong after step 4 when the steps left would take longer than max_seconds (None: no limit)."""

    def __init__(self, max_seconds: float | None, total_steps: int, device: torch.device, first_step: int = 0):
        self.max_seconds, self.total_steps, self.device, self.first_step = max_seconds, total_steps, device, first_step
        self.started: float | None = None

    def after(self, done: int) -> None:
        """Call after each step; `done`: the steps completed, this session's and before."""
        if self.max_seconds is None or done not in (self.first_step + 1, self.first_step + 4):
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if done == self.first_step + 1:
            self.started = time.perf_counter()
            return
        per_step, left = (time.perf_counter() - self.started) / 3, self.total_steps - done
        if per_step * left > self.max_seconds:
            raise RunTooLong(done, per_step, left, self.max_seconds)
