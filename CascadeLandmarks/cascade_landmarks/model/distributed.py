"""Training and detection on several processes with PyTorch's own launcher, ``torchrun``: the process group it
describes in the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), NCCL on GPUs and gloo on CPUs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import distributed

from .devices import select_device


@dataclass
class Process:
    """This process's place in a (possibly distributed) run."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Whether this process writes the files and shows the progress (rank 0)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (nothing to wait for when alone)."""
        if self.world_size > 1:
            distributed.barrier()


def join_process_group(device_name: str) -> Process:
    """Join the process group torchrun describes in the environment, if any; alone otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Process(device=select_device(device_name))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(device_name)
    if device.type == "cuda":
        device = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    else:
        # Processes sharing a CPU each get their share of the cores.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world_size))))
    if not distributed.is_initialized():
        distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Process(rank=distributed.get_rank(), world_size=world_size, device=device)
