"""Several processes (DDP, gloo on the CPU) take the same steps as one process at the same global batch."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from train_tiny import ddp_worker
from loracli.train.loop import Trainer

LAYER = {"train": {"steps": 3, "snapshot_every": 100, "batch": 8}, "sample": {"images": 0}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weights(run_dir) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(run_dir / "state.safetensors")).items() if not k.startswith("optim.")}


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
def test_two_processes_match_one_at_the_same_global_batch(tmp_path):
    from train_tiny import tiny_recipe

    single = Trainer(tiny_recipe(**LAYER), tmp_path / "single")
    single.run()
    single.close()
    mp.spawn(ddp_worker, args=(2, free_port(), str(tmp_path / "ddp"), LAYER), nprocs=2, join=True)
    assert_close(weights(tmp_path / "single"), weights(tmp_path / "ddp"))
    # The steps did something: the weights moved away from a fresh start.
    fresh = Trainer(tiny_recipe(**{**LAYER, "train": {**LAYER["train"], "steps": 1}}), tmp_path / "fresh").model
    assert not torch.equal(fresh.net.conv_out.weight, single.model.net.conv_out.weight)


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    from train_tiny import tiny_recipe

    runs = {}
    for name, batch_gpu in (("full", None), ("accumulated", 2)):
        layer = {**LAYER, "train": {**LAYER["train"], "batch_gpu": batch_gpu}}
        trainer = Trainer(tiny_recipe(**layer), tmp_path / name)
        assert trainer.rounds == (1 if batch_gpu is None else 4)
        trainer.run()
        trainer.close()
        runs[name] = weights(tmp_path / name)
    assert_close(runs["full"], runs["accumulated"])
