"""The order in which training sees the data: a pure function of (seed, position), so resuming needs only the step.

The stream is an endless sequence of epochs, each a fresh permutation of the data set drawn from
``(seed, epoch)``. Training step ``s`` consumes positions ``s·B .. (s+1)·B - 1`` of the stream (``B`` the
global batch); process ``r`` of ``W``, in accumulation round ``k`` of ``R``, takes the micro-batch
``b = B / (W·R)`` at offset ``(k·W + r)·b``. So one process and several see exactly the same images per step.
"""

from __future__ import annotations

from typing import Iterator

import torch


def micro_batch_offset(rank: int, world: int, round_: int, micro_batch: int) -> int:
    """Where a process's micro-batch starts within the global batch (shared with the step's random draws)."""
    return (round_ * world + rank) * micro_batch


class DataOrder(torch.utils.data.Sampler[int]):
    """Dataset indices for one process from training step ``start_step`` on, forever."""

    def __init__(self, size: int, seed: int, batch: int, micro_batch: int, rank: int = 0, world: int = 1,
                 start_step: int = 0) -> None:
        self.size, self.seed, self.batch, self.micro_batch = size, seed, batch, micro_batch
        self.rank, self.world, self.start_step = rank, world, start_step
        self.rounds = batch // (micro_batch * world)
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def index(self, position: int) -> int:
        """The data set index at ``position`` of the stream."""
        epoch, offset = divmod(position, self.size)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
            self._epoch, self._perm = epoch, torch.randperm(self.size, generator=generator)
        return int(self._perm[offset])

    def __iter__(self) -> Iterator[int]:
        step = self.start_step
        while True:
            for round_ in range(self.rounds):
                start = step * self.batch + micro_batch_offset(self.rank, self.world, round_, self.micro_batch)
                for position in range(start, start + self.micro_batch):
                    yield self.index(position)
            step += 1
