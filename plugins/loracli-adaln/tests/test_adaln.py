"""The adaLN plugin: registered through its own distribution, drop-in exact, and conditioning for real."""

from __future__ import annotations

import torch

import loracli
from loracli import registry
from loracli.testing import TINY_NANO, ConditionTesterMixin, example_inputs, perturb
from loracli_adaln.modulation import GatedProjection, ModulatedNorm


class TestAdaLN(ConditionTesterMixin):
    condition, label_dim = "adaln", 3


class TestAdaLNWithUCLoRA(ConditionTesterMixin):
    condition, label_dim = "uc-lora+adaln", 3


def test_registered_from_its_own_distribution():
    assert registry.conditions()["adaln"].distribution == "loracli-adaln"


def test_wraps_the_norm_before_qkv_and_the_output_projection_of_every_block():
    net = loracli.create_model("nano", cond="adaln", **TINY_NANO)
    for site in net.attention_sites():
        assert isinstance(net.net.get_submodule(site.norm), ModulatedNorm)
        assert isinstance(net.net.get_submodule(site.proj), GatedProjection)
        assert not isinstance(net.net.get_submodule(site.qkv), (ModulatedNorm, GatedProjection))


def test_parameter_count_per_block():
    base = loracli.create_model("nano", **TINY_NANO)
    net = loracli.create_model("nano", cond="adaln", adaln_hidden=32, **TINY_NANO)
    e, h = base.embedding_channels(), 32
    expected = sum(2 * (e * h + h) + h * 3 * s.channels + 3 * s.channels for s in base.attention_sites())
    assert sum(p.numel() for p in net.condition_parameters()) == expected
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in base.parameters()) + expected


def test_modulation_matches_its_formula():
    torch.manual_seed(0)
    net = loracli.create_model("nano", cond="adaln", **TINY_NANO).eval()
    perturb(net.parameters())
    site = net.attention_sites()[0]
    norm, proj = net.net.get_submodule(site.norm), net.net.get_submodule(site.proj)
    x = torch.randn(2, site.channels, 4, 4)
    net.context.embedding = torch.randn(2, net.embedding_channels())
    scale, shift = norm.modulation(net.context).chunk(2, dim=1)
    expected = norm.base_layer(x) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    torch.testing.assert_close(norm(x), expected)
    gate = proj.modulation(net.context)
    torch.testing.assert_close(proj(x), proj.base_layer(x) * (1 + gate[:, :, None, None]))
    net.context.clear()


def test_trained_modulation_makes_attention_depend_on_the_timestep():
    torch.manual_seed(0)
    net = loracli.create_model("nano", cond="adaln", **TINY_NANO).eval()
    perturb(net.parameters())
    x, _, _ = example_inputs(net, batch=1)
    with torch.no_grad():
        a, b = net(x, torch.tensor([10])), net(x, torch.tensor([900]))
        for m in net.condition_parameters():
            m.zero_()
        a0, b0 = net(x, torch.tensor([10])), net(x, torch.tensor([900]))
    assert not torch.allclose(a - b, a0 - b0)  # the modulation adds timestep dependence of its own
