"""`loracli train` end to end on a tiny nano run: files, metadata, resume, and one-sentence errors."""

from __future__ import annotations

import json

import PIL.Image
import pytest

import loracli
from train_tiny import write_tiny_toml


def test_train_resume_and_what_the_run_folder_holds(cli, tmp_path):
    toml, out = write_tiny_toml(tmp_path), tmp_path / "run"
    result = cli("train", "nano", "--cond", "time-lora", "--config", toml, "--steps", "4", "--snapshot-every", "2",
                 "--outdir", out)
    assert result.exit_code == 0, result.output
    assert "train.snapshot_every" in result.output  # the resolved config is printed
    assert "Done at step 4" in result.output and str(out / "ckpt.safetensors") in result.output
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "metrics.jsonl", "loss.png", "state.safetensors", "ckpt.safetensors",
            "snapshot-0000002.safetensors", "snapshot-0000004.safetensors", "grid-0000002.png",
            "grid-0000004.png"} <= names

    net = loracli.load(out / "ckpt.safetensors")
    meta = net.checkpoint
    assert meta["ema"] and meta["step"] == 4 and net.config["cond"] == ["time-lora"]
    assert meta["extra"]["data"] == {"path": None, "name": "builtin-shapes", "builtin": True, "resolution": 16,
                                     "label_dim": 10}
    assert meta["extra"]["train"]["train"]["steps"] == 4 and meta["extra"]["train"]["model"] == "nano"
    assert json.loads((out / "config.json").read_text()) == meta["extra"]["train"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["loss"] > 0 for r in rows)
    assert PIL.Image.open(out / "grid-0000004.png").size == (32, 32)  # 4 images of 16x16 in 2 columns

    result = cli("train", "nano", "--cond", "time-lora", "--resume", "--outdir", out, "--steps", "6")
    assert result.exit_code == 0, result.output
    assert loracli.load(out / "ckpt.safetensors").checkpoint["step"] == 6
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == list(range(1, 7))

    result = cli("train", "nano", "--cond", "time-lora", "--resume", "--outdir", out, "--lr", "0.1")
    assert result.exit_code == 2 and "train.lr cannot change" in result.output


def test_class_conditioning_takes_the_classes_from_the_data(cli, tmp_path):
    toml, out = write_tiny_toml(tmp_path), tmp_path / "cond"
    result = cli("train", "nano", "--cond", "time-lora+class-lora", "--config", toml, "--steps", "1",
                 "--grid", "10", "--outdir", out)
    assert result.exit_code == 0, result.output
    net = loracli.load(out / "ckpt.safetensors")
    assert net.label_dim == 10 and net.config["cond"] == ["time-lora", "class-lora"]
    assert PIL.Image.open(out / "grid-0000001.png").size == (160, 16)  # one column per class


@pytest.mark.parametrize("args, message", [
    (["--data", "no/such/folder"], "No data set at"),
    (["--steps", "2", "--kimg", "1"], "Give the training length once"),
    (["--mlp", "64,32"], "do not apply to conditioning 'time-lora'"),
    (["--label-dim", "10", "--data", "PLAIN"], "has no class labels"),
    (["--preset", "cifar10"], "no preset 'cifar10'"),
    (["--finetune", "--cond", "none"], "this network has none"),
])
def test_user_mistakes_exit_2_with_one_sentence(cli, tmp_path, args, message):
    plain = tmp_path / "plain"
    plain.mkdir()
    PIL.Image.new("RGB", (16, 16)).save(plain / "a.png")
    args = [str(plain) if a == "PLAIN" else a for a in args]
    base = ["train", "nano", "--cond", "time-lora", "--config", write_tiny_toml(tmp_path), "--outdir", tmp_path / "r"]
    result = cli(*base, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_an_existing_run_is_not_overwritten(cli, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "state.safetensors").write_bytes(b"x")
    result = cli("train", "nano", "--outdir", out)
    assert result.exit_code == 2 and "already holds a run" in result.output


def test_drop_in_from_a_checkpoint(cli, tmp_path):
    from train_tiny import TINY_NETWORK

    base = loracli.save(loracli.create_model("nano", **TINY_NETWORK), tmp_path / "base.safetensors", step=77)
    toml, out = write_tiny_toml(tmp_path), tmp_path / "dropin"
    result = cli("train", "nano", "--init", base, "--cond", "time-lora", "--config", toml, "--steps", "2",
                 "--outdir", out)
    assert result.exit_code == 0, result.output
    net = loracli.load(out / "ckpt.safetensors")
    assert net.config["cond"] == ["time-lora"] and net.checkpoint["step"] == 2  # the step count restarts
    assert net.checkpoint["extra"]["train"]["init"] == str(base)
    result = cli("train", "edm", "--init", base, "--outdir", tmp_path / "x")
    assert result.exit_code == 2 and "holds a 'nano' network, not 'edm'" in result.output
