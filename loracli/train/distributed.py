"""One process or many (``torchrun --nproc_per_node N -m loracli train ...``): who this process is, and how they agree.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; with more than one process the default process group
is started (NCCL on CUDA, gloo on the CPU) and the model is wrapped in DistributedDataParallel, which averages
gradients. Only rank 0 prints and writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from loracli.runtime import pick_device


@dataclass(frozen=True)
class Process:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def start(device: str) -> Process:
    """This process's place in the job; starts the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Process(rank, world, local_rank, dev)


def stop(process: Process) -> None:
    if process.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(process: Process) -> None:
    if process.distributed:
        dist.barrier()


def any_true(process: Process, flag: bool) -> bool:
    """True on every process when ``flag`` is true on any (e.g. Ctrl-C or a non-finite loss seen by one)."""
    if not process.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=process.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def total(process: Process, value: torch.Tensor) -> torch.Tensor:
    """The sum of a tensor over processes (for the reported loss)."""
    if process.distributed:
        value = value.clone()
        dist.all_reduce(value)
    return value
