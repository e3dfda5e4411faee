"""Resolving presets, overrides and conditioning into one config, and refusing impossible combinations."""

from __future__ import annotations

import pytest

import loracli
from loracli.build import parse_cond, resolve_config
from loracli.errors import UserError


def test_parse_cond():
    assert parse_cond("none") == [] and parse_cond(None) == [] and parse_cond("") == []
    assert parse_cond("time-lora+class-lora") == ["time-lora", "class-lora"]
    assert parse_cond(" time-lora + class-lora ") == ["time-lora", "class-lora"]
    with pytest.raises(UserError, match="cannot be combined"):
        parse_cond("none+time-lora")
    with pytest.raises(UserError, match="twice"):
        parse_cond("time-lora+time-lora")


def test_overrides_and_only_lora_land_in_the_model_config():
    config = resolve_config("nano", cond="none", only_lora=True, label_dim=10, model_channels=16)
    mc = config["model_config"]
    assert mc["model_channels"] == 16 and mc["label_dim"] == 10 and mc["scale_shift"] is False
    assert config["only_lora"] is True and config["preset"] == "default" and config["family"] == "ddpm"


def test_only_lora_network_has_no_scale_and_shift():
    full = loracli.create_model("nano", label_dim=3)
    bare = loracli.create_model("nano", label_dim=3, only_lora=True)
    assert any(".affine." in k for k in full.state_dict())
    assert not any(".affine." in k or "map_" in k for k in bare.state_dict())
    assert sum(p.numel() for p in bare.parameters()) < sum(p.numel() for p in full.parameters())


def test_unknown_preset_lists_presets():
    with pytest.raises(UserError, match="no preset 'huge'.*default"):
        loracli.create_model("nano", preset="huge")


def test_unknown_builder_setting_is_a_user_error():
    with pytest.raises(UserError, match="does not accept these settings"):
        loracli.create_model("nano", no_such_setting=1)


def test_unknown_condition_is_a_user_error():
    with pytest.raises(UserError, match="Unknown conditioning 'sparkle-lora'"):
        loracli.create_model("nano", cond="sparkle-lora")


def test_integer_and_vector_class_labels_are_equivalent():
    import torch

    torch.manual_seed(0)
    net = loracli.create_model("nano", label_dim=4, model_channels=8, channel_mult=[1], channels_per_head=8).eval()
    with torch.no_grad():  # zero-initialised output layers would hide the class
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    x, t = torch.randn(3, 3, 32, 32), torch.tensor([1, 2, 3])
    a = net(x, t, torch.tensor([0, 3, 1]))
    b = net(x, t, torch.eye(4)[[0, 3, 1]])
    assert torch.equal(a, b)
    assert not torch.allclose(a, net(x, t, torch.tensor([1, 3, 1])))
    with pytest.raises(UserError, match="0..3"):
        net(x, t, torch.tensor([0, 4, 1]))
