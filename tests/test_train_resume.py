"""Exact resume, atomic checkpoints, and the two ways a run stops early (NaN loss, Ctrl-C)."""

from __future__ import annotations

import signal

import pytest
import torch
from safetensors.torch import load_file

import loracli
from loracli.train import state as state_module
from loracli.train.loop import Trainer, TrainingDiverged
from loracli.train.state import read_state
from train_tiny import tiny_recipe


def run(run_dir, steps: int, resume: bool = False, **layer) -> Trainer:
    recipe = tiny_recipe(train={"steps": steps, "snapshot_every": 100}, **layer)
    trainer = Trainer(recipe, run_dir, state=read_state(run_dir / "state.safetensors") if resume else None)
    trainer.run()
    trainer.close()
    return trainer


def test_resume_after_n_steps_equals_2n_uninterrupted_bit_for_bit(tmp_path):
    # dropout and the EDM-style EMA ramp make the random streams and the step count matter
    layer = {"network": {"dropout": 0.2}}
    straight = run(tmp_path / "straight", 4, **layer)
    run(tmp_path / "split", 2, **layer)
    resumed = run(tmp_path / "split", 4, resume=True, **layer)
    assert resumed.step == 4
    for a, b in ((straight.model, resumed.model), (straight.ema.model, resumed.ema.model)):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), name
    saved = [load_file(str(d / "state.safetensors")) for d in (tmp_path / "straight", tmp_path / "split")]
    assert saved[0].keys() == saved[1].keys()
    assert all(torch.equal(saved[0][k], saved[1][k]) for k in saved[0])  # optimiser moments included


def test_an_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    trainer = run(tmp_path / "run", 2)
    before = load_file(str(tmp_path / "run" / "state.safetensors"))

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(state_module, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        state_module.save_state(tmp_path / "run" / "state.safetensors", trainer.model, trainer.ema.model,
                                trainer.optimizer, 99, trainer.recipe)
    assert read_state(tmp_path / "run" / "state.safetensors").step == 2
    after = load_file(str(tmp_path / "run" / "state.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert loracli.load(tmp_path / "run" / "ckpt.safetensors").checkpoint["step"] == 2
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")] == []


def test_a_non_finite_loss_stops_with_the_last_good_checkpoint(tmp_path, monkeypatch):
    recipe = tiny_recipe(train={"steps": 6, "snapshot_every": 2})
    trainer = Trainer(recipe, tmp_path / "run")
    step = trainer.train_step

    def poisoned(batches):
        loss = step(batches)
        return loss * float("nan") if trainer.step == 3 else loss

    monkeypatch.setattr(trainer, "train_step", poisoned)
    with pytest.raises(TrainingDiverged, match=r"NaN or infinite between steps 2 and 3, .*last good checkpoint is .*ckpt.safetensors"):
        trainer.run()
    trainer.close()
    assert read_state(tmp_path / "run" / "state.safetensors").step == 2
    assert sorted(p.name for p in (tmp_path / "run").glob("snapshot-*")) == ["snapshot-0000002.safetensors"]


def test_ctrl_c_saves_and_stops_cleanly(tmp_path, monkeypatch):
    trainer = Trainer(tiny_recipe(train={"steps": 50, "snapshot_every": 100}), tmp_path / "run")
    step = trainer.train_step

    def interrupted(batches):
        loss = step(batches)
        if trainer.step == 3:
            signal.raise_signal(signal.SIGINT)  # the loop's handler asks it to stop at the next check
        return loss

    monkeypatch.setattr(trainer, "train_step", interrupted)
    result = trainer.run()
    trainer.close()
    assert result.interrupted and result.step == 3
    assert read_state(tmp_path / "run" / "state.safetensors").step == 3
    assert loracli.load(result.checkpoint).checkpoint["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
