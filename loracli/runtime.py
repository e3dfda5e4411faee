"""Where and how code runs: the device, the precision, CPU threads, and the processes of a torchrun job.

Training, sampling and FID all choose these the same way, so the rules live here once: ``auto`` is CUDA when
present, else the CPU; bf16 autocast is the default on CUDA and fp32 on the CPU; the CLI's CPU threads are
``--threads``, else ``$OMP_NUM_THREADS``, else half the cores up to 4 (``default_threads``); only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable

import torch
import torch.distributed as dist

from loracli.errors import UserError

PRECISIONS = ("bf16", "fp32")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
MAX_DEFAULT_THREADS = 4


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's share), else all of them."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def default_threads(cores: int | None = None) -> int:
    """The CLI's CPU threads when none are asked for: half the usable cores, at least 1, at most 4.

    torch's own default, a thread per core, spin-waits at every parallel region for its slowest thread, so
    one busy core elsewhere (a second run, a data loader, a browser) stalls each step; on small networks such
    as nano more than a few threads also gain little. benchmarks/cpu_threads.py measures it
    (docs/benchmarks.md).
    """
    cores = usable_cores() if cores is None else cores
    return max(1, min(MAX_DEFAULT_THREADS, cores // 2))


def set_threads(threads: int | None = None) -> int:
    """Apply ``threads`` (``--threads``), else leave ``$OMP_NUM_THREADS`` (or ``$MKL_NUM_THREADS``) as torch
    read it, else apply :func:`default_threads`; returns torch's thread count."""
    if threads is None and not any(os.environ.get(name) for name in THREAD_VARIABLES):
        threads = default_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def pick_device(device: str | torch.device | None = "auto", local_rank: int | None = None) -> torch.device:
    """``auto``/None: CUDA when present (GPU ``local_rank`` under torchrun), else the CPU; ``cpu``; ``cuda[:N]``."""
    name = "auto" if device is None else str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        chosen = torch.device(name)
    except RuntimeError:
        raise UserError(f"Unknown device '{device}'; use auto, cpu or cuda.") from None
    if chosen.type not in ("cpu", "cuda"):
        raise UserError(f"Unknown device '{device}'; use auto, cpu or cuda.")
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was given but PyTorch sees no CUDA GPU; use --device cpu.")
        if chosen.index is None:  # pin one GPU: per-image generators and DDP need a definite device
            index = local_rank % torch.cuda.device_count() if local_rank is not None else torch.cuda.current_device()
            chosen = torch.device("cuda", index)
    return chosen


def choose_precision(precision: str | None, device: torch.device) -> str:
    """bf16 on CUDA, fp32 on the CPU, unless asked otherwise."""
    precision = precision or ("bf16" if device.type == "cuda" else "fp32")
    if precision not in PRECISIONS:
        raise UserError(f"Unknown precision '{precision}'; use bf16 or fp32.")
    return precision


def autocast(precision: str | None, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the contexts the network runs in: bf16 autocast (fp32 master weights), or nothing."""
    if choose_precision(precision, device) == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes: ``(0, 1)`` outside a started process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_to_rank_zero(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (in rank order), None elsewhere; ``[obj]`` in a single process."""
    rank, world = rank_and_world()
    if world == 1:
        return [obj]
    out: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out
