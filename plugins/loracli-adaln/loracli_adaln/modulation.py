"""The adaLN modules (scale/shift of the pre-attention norm, gate on the output projection) and ``apply``.

Kept apart from the package's ``SPEC`` so that discovering the plugin imports no torch.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from loracli import nn as lnn
from loracli.conditioning.lora import find_projection
from loracli.errors import UserError

__all__ = ["Modulation", "ModulatedNorm", "GatedProjection", "apply"]


class Modulation(nn.Module):
    """``Linear(E→hidden) → SiLU → Linear(hidden→outputs)`` on the embedding; the output layer starts at zero."""

    def __init__(self, embedding_channels: int, hidden: int, outputs: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(lnn.Linear(embedding_channels, hidden), nn.SiLU(),
                                 lnn.Linear(hidden, outputs, init_weight=0))

    def forward(self, context: Any) -> torch.Tensor:
        return self.mlp(context.require("embedding"))


def _per_channel(v: torch.Tensor, like: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``[N, C]`` -> broadcastable against ``like`` (channels first, or last for token layouts)."""
    ones = [1] * (like.ndim - 2)
    v = v.to(like.dtype)
    return v.reshape(v.shape[0], *ones, v.shape[1]) if channels_last else v.reshape(*v.shape, *ones)


class ModulatedNorm(nn.Module):
    """The norm before qkv, followed by ``· (1 + scale) + shift`` per sample and channel."""

    def __init__(self, base_layer: nn.Module, modulation: Modulation, context: Any) -> None:
        super().__init__()
        self.base_layer, self.modulation, self.context = base_layer, modulation, context
        self.channels_last = isinstance(base_layer, nn.LayerNorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base_layer(x)
        scale, shift = self.modulation(self.context).chunk(2, dim=1)
        return torch.addcmul(_per_channel(shift, h, self.channels_last), h,
                             1 + _per_channel(scale, h, self.channels_last))


class GatedProjection(nn.Module):
    """The attention output projection, followed by ``· (1 + gate)`` per sample and channel."""

    def __init__(self, base_layer: nn.Module, modulation: Modulation, context: Any) -> None:
        super().__init__()
        self.base_layer, self.modulation, self.context = base_layer, modulation, context
        self.channels_last = find_projection(base_layer)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        return y * (1 + _per_channel(self.modulation(self.context), y, self.channels_last))


def apply(model: Any, options: Mapping[str, Any]) -> None:
    """Wrap every attention block's norm and output projection of ``model`` (``ConditionSpec.apply``)."""
    hidden = options["adaln_hidden"]
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise UserError(f"Option 'adaln_hidden' must be a positive integer; got {hidden!r}.")
    model.use_embedding()
    embedding = model.embedding_channels()
    for site in model.attention_sites():
        ref = next(model.net.get_submodule(site.proj).parameters())  # the norm may have none (no affine)
        for name, wrap, outputs in ((site.norm, ModulatedNorm, 2 * site.channels),
                                    (site.proj, GatedProjection, site.channels)):
            base = model.net.get_submodule(name)
            modulation = Modulation(embedding, hidden, outputs).to(device=ref.device, dtype=ref.dtype)
            model.replace_submodule(name, wrap(base, modulation, model.context))
            model.register_condition_module(modulation)
