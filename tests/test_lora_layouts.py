"""The adapter computes the same update whatever the activation layout (NCHW on the CPU, channels_last on the GPU).

The two layouts take different routes (1x1 convolutions vs one accumulating matrix product, see
``LoRAProjection``); both must equal the closed form ``y = W x + b + Σ_i ω_i (B_i A_i x + Σ_{k∈i} bias_k)``,
give the same gradients, and leave a wrapped layer's own output untouched.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from loracli import nn as lnn
from loracli.conditioning.lora import LoRABranch, LoRAProjection


class Ctx:
    omega: torch.Tensor


class FixedOmega(nn.Module):
    def forward(self, context):
        return context.omega


class Scaled(nn.Module):
    """A wrapper between the LoRA adapter and the projection, whose backward needs its own output."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer

    def forward(self, x):
        return torch.exp(self.base_layer(x))


def adapted(base: nn.Module, bias: bool) -> tuple[LoRAProjection, Ctx]:
    torch.manual_seed(0)
    ctx = Ctx()
    layer = LoRAProjection(base, ctx)
    branch = LoRABranch(6, 9, 2, 3, FixedOmega(), bias=bias)
    with torch.no_grad():
        branch.up.normal_()
        if bias:
            branch.bias.normal_()
    layer.add_branch("test", branch)
    ctx.omega = torch.randn(4, 3, dtype=torch.float64).float()
    return layer, ctx


def closed_form(layer: LoRAProjection, ctx: Ctx, x: torch.Tensor) -> torch.Tensor:
    """The wrapped layer's output plus the update written out per basis, in float64 (channels-first)."""
    branch = layer.adapters["test"]
    conv = layer.base_layer if isinstance(layer.base_layer, lnn.Conv2d) else layer.base_layer.base_layer
    xd = x.double().reshape(x.shape[0], 6, -1)
    out = conv.weight.double().reshape(9, 6) @ xd + conv.bias.double()[:, None]
    if isinstance(layer.base_layer, Scaled):
        out = torch.exp(out)
    r = branch.rank
    for i in range(branch.bases):
        w = ctx.omega[:, i].double()[:, None, None]
        a, b = branch.down[i * r:(i + 1) * r].double(), branch.up[:, i * r:(i + 1) * r].double()
        out = out + w * (b @ (a @ xd))
        if branch.bias is not None:
            out = out + w * branch.bias[i * r:(i + 1) * r].double().sum(0)[None, :, None]
    return out.reshape(x.shape[0], 9, *x.shape[2:])


@pytest.mark.parametrize("wrapper", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_channels_last_route_equals_the_closed_form_and_the_nchw_route(bias, wrapper):
    base = lnn.Conv2d(6, 9, 1, init_bias=0.5)
    layer, ctx = adapted(Scaled(base) if wrapper else base, bias)
    x = torch.randn(4, 6, 5, 3)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    expected = closed_form(layer, ctx, x)
    y, y_cl = layer(x), layer(x_cl)
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y_cl.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("wrapper", [False, True])
def test_both_routes_give_the_same_gradients(wrapper):
    base = lnn.Conv2d(6, 9, 1, init_bias=0.5)
    layer, ctx = adapted(Scaled(base) if wrapper else base, bias=True)
    x = torch.randn(4, 6, 5, 3)
    target = torch.randn(4, 9, 5, 3)
    grads = []
    for inp in (x.clone(), x.contiguous(memory_format=torch.channels_last)):
        inp.requires_grad_(True)
        layer.zero_grad(set_to_none=True)
        ((layer(inp) - target) ** 2).sum().backward()
        grads.append([inp.grad.contiguous()] + [p.grad.clone() for p in layer.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
