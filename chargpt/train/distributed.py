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
    env = os.environ
    return Ranks(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


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
