"""The splits as training batches: a split file in memory, and random windows of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from chargpt.errors import DataError
from chargpt.io import file_problem


def load_split(path: str | Path) -> torch.Tensor:
    """A split as a flat uint8 tensor in memory (enwik8's train split is 90 MB)."""
    path = Path(path)
    if (problem := file_problem(path)) == "not found":
        raise FileNotFoundError(f"{path}: split not found (run the preprocess stage)")
    if problem is not None:
        raise DataError(f"{path}: {problem}; a split is the file the preprocess stage writes")
    return torch.from_numpy(np.fromfile(path, dtype=np.uint8))


class BatchSampler:
    """Random (B, T) windows of a split; the generator's state is the sampler's whole position.

    Data parallel: every rank draws the same global batch of `batch_size` windows (same seed) and takes its
    own slice, cut into `micro_batches` pieces for gradient accumulation; so any number of processes and
    accumulation steps trains on exactly the batches of one process, and a checkpoint taken between steps
    holds the position of every rank."""

    def __init__(
        self,
        data: torch.Tensor,
        context: int,
        batch_size: int,
        seed: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        micro_batches: int = 1,
    ):
        if len(data) < context + 1:
            raise DataError(f"a split of {len(data)} bytes is too short for windows of context {context} + 1")
        self.data, self.context, self.batch_size, self.device = data, context, batch_size, device
        self.generator = torch.Generator().manual_seed(seed)
        self._offsets = torch.arange(context + 1)
        self._first_piece, self._micro_batches, self._next_piece = rank * micro_batches, micro_batches, 0
        pieces = world_size * micro_batches
        if batch_size % pieces:
            raise ValueError(f"a batch of {batch_size} sequences does not split into {pieces} equal micro-batches")
        self.micro_size = batch_size // pieces
        self._starts = torch.empty(0, dtype=torch.long)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._next_piece == 0:  # a new global batch, identical on every rank
            self._starts = torch.randint(len(self.data) - self.context, (self.batch_size, 1), generator=self.generator)
        piece = self._first_piece + self._next_piece
        self._next_piece = (self._next_piece + 1) % self._micro_batches
        starts = self._starts[piece * self.micro_size : (piece + 1) * self.micro_size]
        chunk = self.data[starts + self._offsets].long()  # (B, T+1)
        if self.device.type == "cuda":
            chunk = chunk.pin_memory().to(self.device, non_blocking=True)
        return chunk[:, :-1], chunk[:, 1:]
