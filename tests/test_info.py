"""``loracli info``: a checkpoint's model, conditioning, adapted layers, counts and provenance."""

from __future__ import annotations

import json

import pytest
import torch

import loracli
from loracli.testing import TINY_NANO


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps to the terminal; keep each value on one line


def checkpoint(tmp_path, **kw):
    torch.manual_seed(0)
    net = loracli.create_model("nano", **{**TINY_NANO, **kw})
    path = loracli.save(net, tmp_path / "ckpt.safetensors", step=1234, ema=True, extra={"data": {"builtin": True, "name": "builtin-shapes", "resolution": 32}})
    return net, path


def test_info_shows_model_conditioning_layers_and_counts(tmp_path, cli):
    net, path = checkpoint(tmp_path, cond="time-lora+class-lora", label_dim=10, only_lora=True, bases=5)
    result = cli("info", path)
    assert result.exit_code == 0
    out = result.output
    for text in ("nano", "ddpm", "default", "time-lora", "bases=5", "class-lora", "only LoRA", "yes",
                 "step 1234", "EMA", 'built-in data (builtin-shapes, 32 px)', "Adapted layers (8)", "mid.attn.qkv", "time-lora: 4 × 5",
                 "class-lora: 4 × 10"):
        assert text in out, text
    base = sum(p.numel() for p in net.base_parameters())
    cond = sum(p.numel() for p in net.condition_parameters())
    assert f"{base + cond:,} = base {base:,} + conditioning {cond:,}" in out


def test_info_json_counts_match_the_network(tmp_path, cli):
    net, path = checkpoint(tmp_path, cond="uc-lora")
    summary = json.loads(cli("info", path, "--json").output)
    layers = {layer["name"]: layer for layer in summary["layers"]}
    assert sorted(layers) == sorted(n for s in net.attention_sites() for n in (s.qkv, s.proj))
    assert all(layer["adapters"] == {"uc-lora": {"rank": 4, "bases": 18, "bias": True}} for layer in layers.values())
    assert summary["parameters"]["adapters"] == sum(p.numel() for p in net.condition_parameters())
    assert summary["parameters"]["total"] == sum(p.numel() for p in net.parameters())
    assert summary["tensors"] == len(net.state_dict()) and summary["tensors_match"]
    assert summary["step"] == 1234 and summary["ema"] is True and summary["config"]["cond"] == ["uc-lora"]


def test_info_on_a_baseline_has_no_adapted_layers(tmp_path, cli):
    _, path = checkpoint(tmp_path)
    result = cli("info", path)
    assert result.exit_code == 0 and "none (baseline)" in result.output and "Adapted layers" not in result.output


def test_info_on_a_foreign_file_says_to_convert(tmp_path, cli):
    path = tmp_path / "model.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(path))
    result = cli("info", path)
    assert result.exit_code == 2 and "loracli convert" in result.output
