"""Data-parallel training under torchrun (NCCL on GPUs, gloo on CPUs).

The train stage relaunches itself under `torchrun --standalone --nproc_per_node=<train.nproc>` when
train.nproc > 1, so `dvc repro` needs no other command. Each rank trains on its own slice of every global
batch (see BatchSampler), gradients are averaged by DistributedDataParallel, and only rank 0 evaluates,
checkpoints and talks to MLflow. Beyond one machine, run torchrun yourself (README: Multi-GPU).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist

from chargpt.errors import ConfigError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> Ranks:
    """This process's place in a torchrun job (rank 0 of 1 when not launched by torchrun)."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    given = {name: os.environ[name] for name in names if name in os.environ}
    if not given:
        return Ranks()
    if len(given) < len(names):  # a stray one would make this a non-writing rank of a job that does not exist
        missing = [name for name in names if name not in given]
        raise ConfigError(
            f"environment: {', '.join(f'{k}={v}' for k, v in given.items())} without {', '.join(missing)}: torchrun "
            f"sets all three; unset {', '.join(given)} to run as a single process"
        )
    try:
        ranks = Ranks(int(given["RANK"]), int(given["WORLD_SIZE"]), int(given["LOCAL_RANK"]))
    except ValueError:
        raise ConfigError(f"environment: {given}: RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    if not (ranks.world_size >= 1 and 0 <= ranks.rank < ranks.world_size and 0 <= ranks.local_rank < ranks.world_size):
        raise ConfigError(
            f"environment: {given}: expected 0 <= RANK < WORLD_SIZE and 0 <= LOCAL_RANK < WORLD_SIZE, as torchrun "
            f"sets them"
        )
    return ranks


def relaunch_under_torchrun(nproc: int) -> NoReturn:
    """Replace this process by `torchrun --standalone --nproc_per_node=nproc <this script and its arguments>`."""
    # "--": torchrun's parser would otherwise take the script's --run for an abbreviation of its --run-path
    os.execv(
        sys.executable,
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "--", *sys.argv],
    )


def init(ranks: Ranks, device: torch.device) -> None:
    if ranks.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
