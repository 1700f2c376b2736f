"""Where a training process stands under ``torchrun`` (world size, rank, device)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["_Processes"]


@dataclass
class _Processes:
    """Where this process stands under ``torchrun`` (one process: world 1, rank 0)."""

    world: int
    rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @classmethod
    def start(cls, device: str) -> _Processes:
        """Read torchrun's environment; join the process group (gloo on CPU, nccl on CUDA)."""
        import torch.distributed as dist

        world = int(os.environ.get("WORLD_SIZE", "1"))
        procs = cls(world, int(os.environ.get("RANK", "0")), torch.device(device))
        if procs.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if procs.device.type == "cuda" else "gloo")
        if procs.distributed and procs.device.type == "cuda":
            procs.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return procs

    def finish(self) -> None:
        import torch.distributed as dist

        if self.distributed and dist.is_initialized():
            dist.barrier()
