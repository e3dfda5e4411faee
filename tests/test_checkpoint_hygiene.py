"""What killed writes leave behind, file modes, and the rough edges of `loracli convert`'s arguments.

- a killed write leaves ``.<name>.<pid>-<random>.tmp``: the next write of that target (and ``--resume`` for the
  whole run folder) removes it, and nothing ever reads one;
- checkpoints, snapshots and training states get the mode a plain ``open()`` gives (0644 under umask 022),
  although safetensors' writer replaces the temporary file whose mode was set;
- ``--init`` and ``--resume`` refuse NaN weights and broken files as ``load`` does;
- ``convert`` takes kebab-case flags (the old underscore spellings still work, hidden), a folder as DST,
  and says what to do when class-conditioning meets an unconditional network.
"""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest
import torch

import loracli
from loracli.io import atomic
from loracli.io.checkpoint import read_metadata
from loracli.train.state import read_state
from train_tiny import TINY_NETWORK, tiny_recipe, write_tiny_toml

PT = Path(__file__).parent / "fixtures" / "iddpm" / "model000123.pt"


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def dead_pid() -> int:
    """The id of a process that has exited."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_killed_writes_temp_file_is_removed_by_the_next_write_and_never_read(tmp_path):
    target = tmp_path / "ckpt.safetensors"
    stale = tmp_path / f".ckpt.safetensors.{dead_pid()}-abcdefgh.tmp"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".ckpt.safetensors.{os.getppid()}-abcdefgh.tmp"  # a writer that is still running
    live.write_bytes(b"being written")
    other = tmp_path / f".grid.png.{dead_pid()}-abcdefgh.tmp"  # another target's: left to its own next write
    other.write_bytes(b"x")
    loracli.save(loracli.create_model("nano", **TINY_NETWORK), target)
    assert not stale.exists() and live.exists() and other.exists()
    assert loracli.load(target).checkpoint["step"] == 0
    assert atomic.remove_stale_temps(tmp_path) == [other] and live.exists()


def test_checkpoints_snapshots_and_state_get_the_usual_mode(tmp_path, cli, umask_022):
    out = tmp_path / "run"
    result = cli("train", "nano", "--cond", "time-lora", "--config", write_tiny_toml(tmp_path), "--steps", "2",
                 "--snapshot-every", "1", "--outdir", out)
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.safetensors")) + [out / "config.json"]
    assert len(files) >= 4  # ckpt, state, snapshots
    assert {f.name: f.stat().st_mode & 0o777 for f in files} == {f.name: 0o644 for f in files}
    converted = tmp_path / "c.safetensors"
    assert cli("convert", PT, converted, "--image-size", "16").exit_code == 0
    assert converted.stat().st_mode & 0o777 == 0o644


def test_resume_removes_stale_temp_files_and_refuses_nan_weights(tmp_path, cli):
    from loracli.train.loop import Trainer

    run = tmp_path / "run"
    trainer = Trainer(tiny_recipe(train={"steps": 1, "snapshot_every": 100}), run)
    trainer.run()
    trainer.close()
    stale = run / f".state.safetensors.{dead_pid()}-abcdefgh.tmp"
    stale.write_bytes(b"cut")
    assert read_state(run / "state.safetensors").step == 1 and not stale.exists()

    state = run / "state.safetensors"
    data = bytearray(state.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[8 + n: 12 + n] = struct.pack("<f", float("nan"))  # the first tensor's first value
    state.write_bytes(bytes(data))
    result = cli("train", "nano", "--cond", "time-lora", "--resume", "--outdir", run, "--steps", "2")
    assert result.exit_code == 2 and "NaN or infinite values in" in result.output and "Traceback" not in result.output


def test_init_refuses_nan_weights(tmp_path, cli):
    net = loracli.create_model("nano", **TINY_NETWORK)
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] = float("inf")
    base = loracli.save(net, tmp_path / "base.safetensors")
    out = tmp_path / "dropin"
    result = cli("train", "nano", "--init", base, "--cond", "time-lora", "--config", write_tiny_toml(tmp_path),
                 "--steps", "1", "--outdir", out)
    assert result.exit_code == 2 and "NaN or infinite values in 'net." in result.output
    assert not (out / "ckpt.safetensors").exists()


def test_convert_into_an_existing_folder_writes_the_source_name_there(tmp_path, cli):
    folder = tmp_path / "converted"
    folder.mkdir()
    result = cli("convert", PT, folder, "--image-size", "16")
    assert result.exit_code == 0, result.output
    assert (folder / "model000123.safetensors").is_file() and "model000123.safetensors" in result.output


def test_convert_refuses_to_overwrite_its_source(tmp_path, cli):
    src = loracli.save(loracli.create_model("nano", **TINY_NETWORK), tmp_path / "net.safetensors")
    before = src.read_bytes()
    result = cli("convert", src, tmp_path, "--cond", "time-lora")
    assert result.exit_code == 2 and "would overwrite the source" in result.output
    assert src.read_bytes() == before


@pytest.mark.parametrize("spelling", ["kebab", "underscore"])
def test_convert_flags_are_kebab_case_and_the_old_spelling_still_works(spelling, tmp_path, cli):
    flags = {"--image-size": "16", "--diffusion-steps": "1000", "--noise-schedule": "linear",
             "--rescale-timesteps": "False", "--num-heads": "2", "--num-heads-upsample": "2"}
    args = [x for flag, value in flags.items()
            for x in ((flag if spelling == "kebab" else "--" + flag[2:].replace("-", "_")), value)]
    out = tmp_path / "a.safetensors"
    result = cli("convert", PT, out, *args)
    assert result.exit_code == 0, result.output
    mc = read_metadata(out)["config"]["model_config"]
    assert (mc["img_resolution"], mc["diffusion_steps"], mc["noise_schedule"], mc["rescale_timesteps"],
            mc["num_heads"]) == (16, 1000, "linear", False, 2)


def test_help_shows_only_the_kebab_spelling(cli):
    result = cli("convert", "--help")
    assert "--num-heads" in result.output and "--num_heads" not in result.output
    assert "--allow-nonfinite" in result.output


def test_both_spellings_with_different_values_are_refused(tmp_path, cli):
    result = cli("convert", PT, tmp_path / "a.safetensors", "--num-heads", "2", "--num_heads", "4")
    assert result.exit_code == 2 and "--num-heads is given twice" in result.output


def test_class_conditioning_on_an_unconditional_network_says_what_to_do(tmp_path, cli):
    src = loracli.save(loracli.create_model("nano", **TINY_NETWORK), tmp_path / "net.safetensors")
    result = cli("convert", src, tmp_path / "out.safetensors", "--cond", "class-lora")
    assert result.exit_code == 2 and "unconditional network" in result.output
    assert "--label-dim" not in result.output and not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("edit", ["optimiser tensor of another shape", "weights of another dtype", "config a list"])
def test_resume_refuses_a_tampered_state_in_one_sentence(edit, tmp_path, cli):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from loracli.train.loop import Trainer

    run = tmp_path / "run"
    trainer = Trainer(tiny_recipe(train={"steps": 1, "snapshot_every": 100}), run)
    trainer.run()
    trainer.close()
    state = run / "state.safetensors"
    tensors = load_file(str(state))
    with safe_open(str(state), framework="pt") as f:
        meta = f.metadata()
    if edit == "optimiser tensor of another shape":
        key = next(k for k in tensors if k.startswith("optim.") and tensors[k].dim())
        tensors[key] = torch.zeros(3)
    elif edit == "weights of another dtype":
        key = next(k for k in tensors if k.startswith("model.") and tensors[k].is_floating_point())
        tensors[key] = tensors[key].double()
    else:
        meta["model_config"] = "[]"
    save_file(tensors, str(state), metadata=meta)
    result = cli("train", "nano", "--cond", "time-lora", "--resume", "--outdir", run, "--steps", "2")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) <= 2
