"""The dit base model: DiT's numerics (an independent reference-structured forward from the same weights),
adaLN-Zero's identity start, parameter counts from the architecture, and loracli's model/variant contracts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from loracli.build import create_model
from loracli.conditioning.inject import lora_projections
from loracli.models.dit import parameter_count, sincos_2d
from loracli.testing import ConditionTesterMixin, ModelTesterMixin, example_inputs, perturb

TINY = {"img_resolution": 8, "hidden_size": 32, "depth": 2, "num_heads": 2, "diffusion_steps": 100}


def build(seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    options = {"preset": "tiny", "label_dim": 3, **kwargs}
    return create_model("dit", **options).eval()


# -- an independent forward written from the DiT paper's equations and the reference code's layout ---------------
def mae_pos_embed(dim: int, grid: int) -> np.ndarray:
    """MAE's 2-D sin-cos table as the reference builds it (numpy meshgrid with w first)."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    g = np.stack(np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32)), axis=0)
    g = g.reshape(2, 1, grid, grid)
    return np.concatenate([one_d(dim // 2, g[0]), one_d(dim // 2, g[1])], axis=1)


def reference_forward(sd: dict, cfg: dict, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    d, p, heads = cfg["hidden_size"], cfg["patch_size"], cfg["num_heads"]
    lin = lambda h, name: h @ sd[name + ".weight"].T + sd[name + ".bias"]  # noqa: E731
    ln = lambda h: F.layer_norm(h, (d,), eps=1e-6)  # noqa: E731
    mod = lambda h, shift, scale: h * (1 + scale[:, None]) + shift[:, None]  # noqa: E731
    n, grid = x.shape[0], cfg["img_resolution"] // p
    h = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=p).flatten(2).transpose(1, 2)
    h = h + torch.from_numpy(mae_pos_embed(d, grid)).float()[None]
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = (t.float() * 1000 / cfg["diffusion_steps"])[:, None] * freqs[None]
    tf = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    c = lin(F.silu(lin(tf, "t_embedder.mlp.0")), "t_embedder.mlp.2") + sd["y_embedder.embedding_table.weight"][y]
    for i in range(cfg["depth"]):
        b = f"blocks.{i}."
        sm, cm, gm, sp, cp, gp = lin(F.silu(c), b + "adaLN_modulation.1").chunk(6, dim=1)
        a = lin(mod(ln(h), sm, cm), b + "attn.qkv").reshape(n, -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        w = (a[0] @ a[1].transpose(-2, -1)) * (d // heads) ** -0.5
        o = (w.softmax(-1) @ a[2]).transpose(1, 2).reshape(n, -1, d)
        h = h + gm[:, None] * lin(o, b + "attn.proj")
        m = lin(F.gelu(lin(mod(ln(h), sp, cp), b + "mlp.fc1"), approximate="tanh"), b + "mlp.fc2")
        h = h + gp[:, None] * m
    shift, scale = lin(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, dim=1)
    h = lin(mod(ln(h), shift, scale), "final_layer.linear")
    out_c = h.shape[-1] // (p * p)
    h = torch.einsum("nhwpqc->nchpwq", h.reshape(n, grid, grid, p, p, out_c))
    return h.reshape(n, out_c, grid * p, grid * p)


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_forward_matches_a_reference_structured_dit_from_the_same_weights(learn_sigma):
    net = build(learn_sigma=learn_sigma, label_dropout=0.1)
    perturb(net.parameters(), scale=0.1)
    x, t, _ = example_inputs(net, batch=3)
    y = torch.tensor([2, 0, 1])
    with torch.no_grad():
        ours = net(x, t, y)
        sd = {k: v for k, v in net.net.state_dict().items()}
        ref = reference_forward(sd, net.config["model_config"] | {"patch_size": 2}, x, t, y)
    assert ours.shape == (3, 6 if learn_sigma else 3, 8, 8)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_position_embedding_is_maes_table():
    ours = sincos_2d(32, 4).numpy()
    np.testing.assert_allclose(ours, mae_pos_embed(32, 4), rtol=0, atol=1e-6)
    assert not np.allclose(ours, sincos_2d(32, 4).numpy().reshape(4, 4, 32).transpose(1, 0, 2).reshape(16, 32))


@pytest.mark.parametrize("redrawn", [False, True])
def test_fresh_network_is_zero_and_fresh_blocks_are_the_identity(redrawn):
    net = build(label_dropout=0.1)
    if redrawn:  # every layer re-draws its own initialisation (as re-seeding a built network module by module does)
        owners = [m for m in net.modules() if any(True for _ in m.parameters(recurse=False))]
        assert all(hasattr(m, "reset_parameters") for m in owners)
        for module in owners:
            module.reset_parameters()
        assert net.net.blocks[0].attn.qkv.weight.abs().max() <= (6 / (32 + 96)) ** 0.5  # xavier-uniform bound
        assert 0.015 < net.net.t_embedder.mlp[0].weight.std() < 0.025  # N(0, 0.02)
    x, t, labels = example_inputs(net, batch=2)
    with torch.no_grad():
        assert torch.equal(net(x, t, labels), torch.zeros_like(x))
        # adaLN-Zero: the gates start at zero, so every block passes its tokens through unchanged
        tokens = torch.randn(2, 16, 32)
        c = net.net.embed(t, labels)
        for block in net.net.blocks:
            assert torch.equal(block(tokens, c), tokens)
    only = build(only_lora=True)
    with torch.no_grad():
        assert torch.equal(only(x, t, labels), torch.zeros_like(x))  # zero output projection
        assert not torch.equal(only.net.blocks[0](tokens, None), tokens)  # no gates: blocks act from the start


@pytest.mark.parametrize("options", [
    {}, {"learn_sigma": True}, {"label_dropout": 0.1}, {"label_dim": 0}, {"only_lora": True},
    {"only_lora": True, "learn_sigma": True, "label_dim": 0}, {"mlp_ratio": 2.0, "depth": 3},
])
def test_parameter_count_follows_the_architecture(options):
    net = build(**options)
    config = net.config["model_config"]
    assert sum(p.numel() for p in net.parameters()) == parameter_count(**config)


def test_class_labels_select_table_rows_and_no_class_selects_the_null_row():
    net = build(label_dropout=0.1).net
    table = net.y_embedder.embedding_table.weight
    one_hot = F.one_hot(torch.tensor([2, 0]), 3).float()
    torch.testing.assert_close(net.y_embedder(one_hot), table[[2, 0]])
    torch.testing.assert_close(net.y_embedder(torch.zeros(1, 3)), table[[3]])
    net.y_embedder.train()
    net.y_embedder.dropout = 1.0
    torch.testing.assert_close(net.y_embedder(one_hot), table[[3, 3]])


def test_only_lora_has_no_modulation_and_takes_the_class_only_through_class_lora():
    net = build(only_lora=True, cond="time-lora+class-lora")
    assert not [n for n, _ in net.named_parameters() if "adaLN" in n or "embedder." in n.replace("x_embedder.", "")]
    assert len(lora_projections(net.net)) == 2 * 2  # qkv and proj of both blocks
    perturb(net.parameters())
    x, t, _ = example_inputs(net, batch=1)
    with torch.no_grad():
        assert not torch.allclose(net(x, t, torch.tensor([0])), net(x, t, torch.tensor([2])), atol=1e-4)
        for layer in lora_projections(net.net).values():
            layer.adapters["class_lora"].up.zero_()
        assert torch.equal(net(x, t, torch.tensor([0])), net(x, t, torch.tensor([2])))


class TestDiTModel(ModelTesterMixin):
    model, preset, model_kwargs, label_dim = "dit", "tiny", TINY, 3


class TestDiTTimeClassLoRA(ConditionTesterMixin):
    condition, model, preset, model_kwargs, label_dim = "time-lora+class-lora", "dit", "tiny", TINY, 3


class TestDiTUCLoRA(ConditionTesterMixin):
    condition, model, preset, model_kwargs, label_dim = "uc-lora", "dit", "tiny", TINY, 3


class TestDiTOnlyLoRATimeClass(ConditionTesterMixin):
    condition, model, preset, model_kwargs = "time-lora+class-lora", "dit", "tiny", TINY
    label_dim, only_lora = 3, True
