"""loracli checkpoints: exact round trip, atomic writes, and one clear error for every bad file."""

from __future__ import annotations

import json
import os

import pytest
import torch

import loracli
from loracli.errors import UserError
from loracli.io import atomic, checkpoint

TINY = dict(model_channels=8, channel_mult=[1, 2], attn_resolutions=[16], channels_per_head=8)


def tiny(seed: int = 0, **kw):
    torch.manual_seed(seed)
    net = loracli.create_model("nano", **{**TINY, **kw})
    with torch.no_grad():  # move every tensor away from its init so zero-init layers are tested too
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return net


def test_round_trip_is_bit_exact_with_config_and_metadata(tmp_path):
    net = tiny(label_dim=3)
    path = loracli.save(net, tmp_path / "ck.safetensors", step=123, ema=True, extra={"data": {"name": "x"}})
    back = loracli.load(path)
    assert back.config == net.config
    assert back.checkpoint["step"] == 123 and back.checkpoint["ema"] is True
    assert back.checkpoint["extra"] == {"data": {"name": "x"}}
    own, loaded = net.state_dict(), back.state_dict()
    assert own.keys() == loaded.keys()
    for k in own:
        assert torch.equal(own[k], loaded[k]), k
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([5, 900])
    net.eval()
    assert torch.equal(net(x, t, [0, 2]), back(x, t, [0, 2]))


def test_config_rebuilds_without_the_preset(tmp_path):
    net = tiny(dropout=0.25)
    meta = checkpoint.read_metadata(loracli.save(net, tmp_path / "a.safetensors"))
    assert meta["config"]["model_config"]["dropout"] == 0.25
    assert meta["config"]["model_config"]["scale_shift"] is True


def test_failed_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "ck.safetensors"
    first = tiny(seed=1)
    loracli.save(first, path, step=1)
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        loracli.save(tiny(seed=2), path, step=2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck.safetensors"]  # no temp file left behind
    assert loracli.load(path).checkpoint["step"] == 1


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "f.txt"
    atomic.write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("new")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    atomic.write_text(target, "new")
    assert target.read_text() == "new"


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="No checkpoint at"):
        loracli.load(tmp_path / "nope.safetensors")


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(UserError, match="is a folder"):
        loracli.load(tmp_path)


@pytest.mark.parametrize("cut", [4, 100, -10])
def test_truncated_file(tmp_path, cut):
    path = loracli.save(tiny(), tmp_path / "ck.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(UserError, match="truncated|not a safetensors"):
        loracli.load(path)


def test_foreign_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"something": "else"})
    with pytest.raises(UserError, match="not a loracli checkpoint.*loracli convert"):
        loracli.load(path)


def test_not_safetensors_at_all(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(os.urandom(64))
    with pytest.raises(UserError, match="not a safetensors|truncated"):
        loracli.load(path)


def test_tensors_that_do_not_fit_the_config_are_listed(tmp_path):
    from safetensors.torch import load_file, save_file

    path = loracli.save(tiny(), tmp_path / "ck.safetensors")
    meta = checkpoint.read_header(path)["__metadata__"]
    tensors = load_file(str(path))
    tensors.pop("net.conv_in.weight")
    tensors["net.extra"] = torch.zeros(1)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(UserError, match=r"missing 1 \(net.conv_in.weight\); unexpected 1 \(net.extra\)"):
        loracli.load(path)


def test_metadata_is_plain_json(tmp_path):
    path = loracli.save(tiny(), tmp_path / "ck.safetensors", step=7)
    meta = checkpoint.read_header(path)["__metadata__"]
    assert meta["format"] == "loracli-checkpoint" and meta["step"] == "7"
    assert json.loads(meta["config"])["model"] == "nano"


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
