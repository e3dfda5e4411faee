"""The LoRA adapter around one attention projection: m condition-weighted bases of rank r (PAPER §2.2).

``LoRAProjection`` keeps the wrapped layer intact as ``base_layer`` (its weights are never touched) and adds,
per conditioning variant, a :class:`LoRABranch`:

    y = base_layer(x) + up · (repeat_interleave(ω, r) ⊙ (down · x)) [+ repeat_interleave(ω, r) @ bias]

i.e. one rank-(m·r) LoRA whose rank channels are gated per sample -- never a per-sample weight matrix. Basis i
owns rank channels ``i·r … i·r + r − 1`` (the official code's layout, so its weights copy one to one).
Several variants on one projection are computed together: their ``down``/``up`` matrices and gates are
concatenated, so the adapter costs two extra matmuls however many variants are stacked.

State-dict keys under a wrapped projection ``X`` (variant names with ``-`` written ``_``)::

    X.base_layer.weight / .bias        the original projection, unchanged
    X.adapters.<variant>.down          [m·r, d_in]   A, init N(0, 1/r²)
    X.adapters.<variant>.up            [d_out, m·r]  B, init 0
    X.adapters.<variant>.bias          [m·r, d_out]  ω-weighted bias, init 0 (UC-LoRA only)
    X.adapters.<variant>.omega.*       where ω comes from (see ``composers.py``)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from loracli import nn as lnn


class LoRABranch(nn.Module):
    """One variant's m bases of rank r on one projection, and the module that gives their weights ω.

    Initialisation as the official code: ``down ~ N(0, 1/r²)``, ``up = 0``, ``bias = 0`` and no α/r scale, so
    a freshly added branch changes nothing.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bases: int, omega: nn.Module,
                 bias: bool = False) -> None:
        super().__init__()
        self.rank, self.bases = rank, bases
        self.variant = ""  # set when added to a projection
        self.down = nn.Parameter(torch.randn(rank * bases, in_features) / rank)
        self.up = nn.Parameter(torch.zeros(out_features, rank * bases))
        self.bias = nn.Parameter(torch.zeros(rank * bases, out_features)) if bias else None
        self.omega = omega

    def gate(self, context: Any) -> torch.Tensor:
        """``repeat_interleave(ω, r)``: the per-sample weight of every rank channel, ``[N, m·r]``."""
        return torch.repeat_interleave(self.omega(context), self.rank, dim=1)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, bases={self.bases}, bias={self.bias is not None}"


def find_projection(module: nn.Module) -> tuple[nn.Module, bool]:
    """The innermost projection under any wrappers (``base_layer`` chains) and whether it is a Linear.

    Only 1x1 projections can be adapted: ``Linear``, ``nn.Conv1d``/``nn.Conv2d`` with kernel 1 and no
    stride, padding or groups, and :class:`loracli.nn.Conv2d` with kernel 1 and no resampling.
    """
    layer = module
    while isinstance(getattr(layer, "_modules", {}).get("base_layer"), nn.Module):
        layer = layer._modules["base_layer"]
    if isinstance(layer, (nn.Linear, lnn.Linear)):
        return layer, True
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        unpadded = isinstance(layer.padding, str) or set(layer.padding) == {0}  # 'same' is 0 for kernel 1
        if (set(layer.kernel_size) == {1} and set(layer.stride) == {1} and set(layer.dilation) == {1}
                and layer.groups == 1 and unpadded):
            return layer, False
    if isinstance(layer, lnn.Conv2d) and layer.weight is not None:
        if tuple(layer.weight.shape[2:]) == (1, 1) and not (layer.up or layer.down):
            return layer, False
    raise TypeError(f"LoRA can only wrap 1x1 projections (Linear, or a kernel-1 convolution); got {layer!r}")


def _cat(tensors: list[torch.Tensor], dim: int) -> torch.Tensor:
    """``torch.cat``, without a copy for the usual single branch."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=dim)


def projection_features(module: nn.Module) -> tuple[int, int]:
    """``(d_in, d_out)`` of a projection (possibly already wrapped)."""
    layer, _ = find_projection(module)
    return int(layer.weight.shape[1]), int(layer.weight.shape[0])


class LoRAProjection(nn.Module):
    """A projection plus condition-gated LoRA branches, one per conditioning variant.

    The condition comes from ``context`` (the :class:`ConditionContext` shared with the ConditionedModel),
    which each branch's ``omega`` reads. Attributes the wrapper does not have (``weight``, ``in_channels``,
    ...) are read from ``base_layer``, so code that inspects the projection keeps working.
    """

    def __init__(self, base_layer: nn.Module, context: Any) -> None:
        super().__init__()
        self.channels_last = find_projection(base_layer)[1]
        self.in_features, self.out_features = projection_features(base_layer)
        self.base_layer = base_layer
        self.adapters = nn.ModuleDict()
        self.context = context

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    def add_branch(self, variant: str, branch: LoRABranch) -> None:
        key = variant.replace("-", "_")
        if key in self.adapters:
            raise ValueError(f"this projection already has a '{variant}' adapter")
        ref = find_projection(self.base_layer)[0].weight
        branch.variant = variant
        self.adapters[key] = branch.to(device=ref.device, dtype=ref.dtype)

    def _project(self, x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """Apply ``matrix`` ([out, in]) along the channel axis of ``x``, as the wrapped layer does."""
        if self.channels_last:
            return F.linear(x, matrix)
        if x.ndim == 4:
            return F.conv2d(x, matrix[:, :, None, None])
        return F.conv1d(x, matrix[:, :, None])

    def _per_sample(self, v: torch.Tensor, ndim: int) -> torch.Tensor:
        """``[N, C]`` -> broadcastable against an activation of rank ``ndim`` in this layer's layout."""
        ones = [1] * (ndim - 2)
        return v.reshape(v.shape[0], *ones, v.shape[1]) if self.channels_last else v.reshape(*v.shape, *ones)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        branches = list(self.adapters.values())
        if not branches:
            return y
        gates = [b.gate(self.context) for b in branches]
        down = _cat([b.down for b in branches], dim=0).to(x.dtype)
        h = self._project(x, down)
        h = h * self._per_sample(_cat(gates, dim=1).to(h.dtype), h.ndim)
        delta = self._project(h, _cat([b.up for b in branches], dim=1).to(h.dtype))
        biased = [i for i, b in enumerate(branches) if b.bias is not None]
        if biased:
            bias = _cat([branches[i].bias for i in biased], dim=0).to(delta.dtype)
            shift = _cat([gates[i] for i in biased], dim=1).to(delta.dtype) @ bias
            delta = delta + self._per_sample(shift, delta.ndim)
        return y + delta

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
