"""The data order: a fresh permutation per epoch, the same images per step for one process or several."""

from __future__ import annotations

import itertools

from loracli.data.order import DataOrder


def first(order: DataOrder, n: int) -> list[int]:
    return list(itertools.islice(iter(order), n))


def test_each_epoch_is_a_permutation_and_epochs_differ():
    stream = first(DataOrder(size=10, seed=3, batch=5, micro_batch=5), 30)
    epochs = [stream[i:i + 10] for i in (0, 10, 20)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert first(DataOrder(size=10, seed=3, batch=5, micro_batch=5), 30) == stream
    assert first(DataOrder(size=10, seed=4, batch=5, micro_batch=5), 10) != stream[:10]


def test_processes_and_accumulation_rounds_split_each_global_batch():
    single = first(DataOrder(size=7, seed=0, batch=8, micro_batch=8), 24)  # 3 steps
    ranks = [first(DataOrder(size=7, seed=0, batch=8, micro_batch=2, rank=r, world=2), 12) for r in range(2)]
    for step in range(3):
        together = []
        for round_ in range(2):  # micro-batch at offset (round · world + rank) · micro
            for r in range(2):
                together += ranks[r][step * 4 + round_ * 2: step * 4 + round_ * 2 + 2]
        assert together == single[step * 8:(step + 1) * 8]


def test_starting_at_a_step_continues_the_stream():
    full = first(DataOrder(size=9, seed=1, batch=4, micro_batch=4), 20)
    assert first(DataOrder(size=9, seed=1, batch=4, micro_batch=4, start_step=3), 8) == full[12:20]
