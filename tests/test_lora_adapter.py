"""The LoRA adapter around one projection, against the closed form ΔW(c) = Σ_i ω_i(c) B_i A_i (PAPER §2.2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from loracli import nn as lnn
from loracli.conditioning.lora import LoRABranch, LoRAProjection, find_projection


class FixedOmega(nn.Module):
    """ω read from a plain attribute of the context, so a test controls it directly."""

    def forward(self, context):
        return context.omega


class Ctx:
    omega: torch.Tensor


def wrapped(base: nn.Module, d_in: int, d_out: int, rank: int, bases: int, bias: bool, seed: int = 0):
    torch.manual_seed(seed)
    ctx = Ctx()
    layer = LoRAProjection(base, ctx)
    branch = LoRABranch(d_in, d_out, rank, bases, FixedOmega(), bias=bias)
    with torch.no_grad():
        branch.up.normal_()
        if bias:
            branch.bias.normal_()
    layer.add_branch("test", branch)
    return layer, branch, ctx


def closed_form_delta(branch: LoRABranch, omega: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ΔW = Σ_i ω_i B_i A_i and Δb = Σ_i ω_i Σ_{k in basis i} bias[k] (test-only, materialised)."""
    r = branch.rank
    dw = torch.zeros(omega.shape[0], branch.up.shape[0], branch.down.shape[1], dtype=torch.float64)
    db = torch.zeros(omega.shape[0], branch.up.shape[0], dtype=torch.float64)
    for i in range(branch.bases):
        a = branch.down[i * r:(i + 1) * r].double()
        b = branch.up[:, i * r:(i + 1) * r].double()
        dw += omega[:, i, None, None].double() * (b @ a)
        if branch.bias is not None:
            db += omega[:, i, None].double() * branch.bias[i * r:(i + 1) * r].double().sum(0)
    return dw, db


@pytest.mark.parametrize("kind", ["conv2d", "loracli-conv2d", "conv1d", "linear"])
def test_adapter_equals_the_composed_low_rank_update(kind):
    d_in, d_out, rank, bases, n = 6, 9, 2, 3, 4
    base = {"conv2d": nn.Conv2d(d_in, d_out, 1), "loracli-conv2d": lnn.Conv2d(d_in, d_out, 1),
            "conv1d": nn.Conv1d(d_in, d_out, 1), "linear": nn.Linear(d_in, d_out)}[kind]
    layer, branch, ctx = wrapped(base, d_in, d_out, rank, bases, bias=True)
    ctx.omega = torch.randn(n, bases)
    x = {"conv2d": torch.randn(n, d_in, 3, 5), "loracli-conv2d": torch.randn(n, d_in, 3, 5),
         "conv1d": torch.randn(n, d_in, 7), "linear": torch.randn(n, 7, d_in)}[kind]
    dw, db = closed_form_delta(branch, ctx.omega)
    w = base.weight.reshape(d_out, d_in).double() + dw  # [n, out, in]
    b = base.bias.double()[None] + db
    if kind == "linear":
        expected = torch.einsum("noi,nti->nto", w, x.double()) + b[:, None]
    else:
        xf = x.double().reshape(n, d_in, -1)
        expected = (torch.einsum("noi,nil->nol", w, xf) + b[:, :, None]).reshape(n, d_out, *x.shape[2:])
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_wrapping_keeps_the_base_layer_and_its_weights():
    base = lnn.Conv2d(8, 24, 1)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    layer, _, _ = wrapped(base, 8, 24, 4, 3, bias=True)
    assert layer.base_layer is base
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert layer.weight is base.weight and layer.in_channels == 8  # attributes read through
    assert sorted(layer.state_dict()) == ["adapters.test.bias", "adapters.test.down", "adapters.test.up",
                                          "base_layer.bias", "base_layer.weight"]


def test_fresh_branch_initialisation():
    torch.manual_seed(0)
    branch = LoRABranch(256, 768, rank=4, bases=18, omega=FixedOmega(), bias=True)
    assert branch.down.shape == (72, 256) and branch.up.shape == (768, 72) and branch.bias.shape == (72, 768)
    assert abs(branch.down.std().item() - 0.25) < 0.005 and abs(branch.down.mean().item()) < 0.005
    assert not branch.up.any() and not branch.bias.any()


def test_fresh_adapter_output_is_bit_equal_to_the_base_layer():
    torch.manual_seed(0)
    base = nn.Conv2d(8, 24, 1)
    ctx = Ctx()
    layer = LoRAProjection(base, ctx)
    layer.add_branch("test", LoRABranch(8, 24, 4, 3, FixedOmega(), bias=True))
    ctx.omega = torch.randn(2, 3) * 10
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(layer(x), base(x))


def test_basis_i_owns_rank_channels_i_r_to_i_r_plus_r():
    layer, branch, ctx = wrapped(nn.Linear(5, 4, bias=False), 5, 4, rank=3, bases=4, bias=False)
    x = torch.randn(1, 5)
    ctx.omega = torch.tensor([[0.0, 0.0, 1.0, 0.0]])  # only basis 2: rank channels 6, 7, 8
    expected = x @ branch.down[6:9].T @ branch.up[:, 6:9].T
    torch.testing.assert_close(layer(x) - layer.base_layer(x), expected)


def test_stacked_variants_add_their_updates():
    torch.manual_seed(0)
    base, ctx = nn.Conv2d(6, 6, 1), Ctx()
    layer = LoRAProjection(base, ctx)
    branches = {"a": LoRABranch(6, 6, 2, 3, FixedOmega(), bias=True), "b": LoRABranch(6, 6, 4, 3, FixedOmega())}
    for name, br in branches.items():
        with torch.no_grad():
            br.up.normal_()
            if br.bias is not None:
                br.bias.normal_()
        layer.add_branch(name, br)
    ctx.omega = torch.randn(2, 3)
    x = torch.randn(2, 6, 3, 3)
    deltas = []
    for br in branches.values():
        single = LoRAProjection(base, ctx)
        single.add_branch("only", br)
        deltas.append(single(x) - base(x))
    torch.testing.assert_close(layer(x), base(x) + deltas[0] + deltas[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="already has"):
        layer.add_branch("a", LoRABranch(6, 6, 2, 3, FixedOmega()))


@pytest.mark.parametrize("base", [nn.Conv2d(4, 4, 3, padding=1), nn.Conv1d(4, 4, 1, stride=2),
                                  lnn.Conv2d(4, 4, 1, down=True), nn.GroupNorm(2, 4)])
def test_only_one_by_one_projections_can_be_wrapped(base):
    with pytest.raises(TypeError, match="1x1 projections"):
        find_projection(base)


def test_adapter_runs_under_bf16_autocast():
    layer, _, ctx = wrapped(lnn.Conv2d(8, 8, 1), 8, 8, 2, 2, bias=True)
    ctx.omega = torch.randn(2, 2)
    x = torch.randn(2, 8, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), layer(x), rtol=0.05, atol=0.05)
