"""The LoRA adapter around one attention projection: m condition-weighted bases of rank r (PAPER §2.2).

``LoRAProjection`` keeps the wrapped layer intact as ``base_layer`` (its weights are never touched) and adds,
per conditioning variant, a :class:`LoRABranch`:

    y = base_layer(x) + up · (repeat_interleave(ω, r) ⊙ (down · x)) [+ repeat_interleave(ω, r) @ bias]

i.e. one rank-(m·r) LoRA whose rank channels are gated per sample -- never a per-sample weight matrix. Basis i
owns rank channels ``i·r … i·r + r − 1`` (the official code's layout, so its weights copy one to one).
Several variants on one projection are computed together: their ``down``/``up`` matrices and gates are
concatenated, so the adapter costs two extra matmuls however many variants are stacked (and the ω-weighted
bias none: it joins the up-projection, see :class:`LoRAProjection`).

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

# The ω of a call's biased branches [N, m] and their per-basis biases [m, d_out] (None: no branch has a bias).
OmegaBias = tuple[torch.Tensor, torch.Tensor] | None


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
        self.down = nn.Parameter(torch.empty(rank * bases, in_features))
        self.up = nn.Parameter(torch.empty(out_features, rank * bases))
        self.bias = nn.Parameter(torch.empty(rank * bases, out_features)) if bias else None
        self.reset_parameters()
        self.omega = omega

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.down.copy_(torch.randn(self.down.shape) / self.rank)
            self.up.zero_()
            if self.bias is not None:
                self.bias.zero_()

    def rank_weights(self, omega: torch.Tensor) -> torch.Tensor:
        """``repeat_interleave(ω, r)``, the per-sample weight of every rank channel ``[N, m·r]`` (one copy)."""
        n, m = omega.shape
        return omega[:, :, None].expand(n, m, self.rank).reshape(n, m * self.rank)

    def basis_bias(self) -> torch.Tensor:
        """``[m, d_out]``: each basis's bias rows summed, so the ω-weighted bias is ``ω @ basis_bias``."""
        return self.bias.reshape(self.bases, self.rank, -1).sum(dim=1)

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

    How it is computed (the adapters must stay cheap beside the projection they wrap, so no extra pass over
    the projection's wide output where it can be avoided):

    - Features-last activations (a Linear, or a 1x1 convolution fed channels_last, as in GPU training and
      sampling) take the matrix route: the update is accumulated onto the base output by one GEMM with
      ``beta=1`` (``addmm``), so the delta is never written out and read back, and the ω-weighted bias rides
      along as m extra rank channels whose activation is ω itself (``ω @ basis_bias`` is an up-projection by
      ``basis_bias^T``). When sampling (no autograd) the GEMM accumulates in place.
    - Channels-first activations (NCHW on the CPU, Conv1d) use 1x1 convolutions, which beat batched matrix
      products there, and add the update (and the bias, per sample) in place.

    A plain projection's output is not needed by its backward, so updating it in place is safe; behind another
    wrapper the output is never updated in place.
    """

    def __init__(self, base_layer: nn.Module, context: Any) -> None:
        super().__init__()
        projection, self.features_last = find_projection(base_layer)
        self.in_features, self.out_features = projection_features(base_layer)
        self.in_place = projection is base_layer  # its output is ours to update (see the class docstring)
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

    def _update(self, branches: list[LoRABranch]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, OmegaBias]:
        """This call's ``down [R, d_in]``, ``up [d_out, R]``, ``gate [N, R]`` and, for biased branches, their
        ``(ω [N, m], basis_bias [m, d_out])``. Each branch's ω is computed once."""
        omegas = [b.omega(self.context) for b in branches]
        gate = _cat([b.rank_weights(w) for b, w in zip(branches, omegas)], dim=1)
        down = _cat([b.down for b in branches], dim=0)
        up = _cat([b.up for b in branches], dim=1)
        biased = [i for i, b in enumerate(branches) if b.bias is not None]
        if not biased:
            return down, up, gate, None
        return down, up, gate, (_cat([omegas[i] for i in biased], dim=1),
                                _cat([branches[i].basis_bias() for i in biased], dim=0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        branches = list(self.adapters.values())
        if not branches:
            return y
        down, up, gate, bias = self._update(branches)
        if self.matrix_route(x):
            return self._features_last(x, y, down, up, gate, bias)
        return self._channels_first(x, y, down, up, gate, bias)

    def matrix_route(self, x: torch.Tensor) -> bool:
        """Whether ``x`` has its features last in memory (a Linear's input, a channels_last 4-D activation)."""
        return self.features_last or (x.ndim == 4 and x.movedim(1, -1).is_contiguous() and not x.is_contiguous())

    def _features_last(self, x: torch.Tensor, y: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
                       gate: torch.Tensor, bias: OmegaBias) -> torch.Tensor:
        moved = not self.features_last  # a channels_last 4-D activation seen as [N, H, W, C]
        x_ = x.movedim(1, -1) if moved else x
        y_ = y.movedim(1, -1) if moved else y
        per_sample = [x_.shape[0], *([1] * (x_.ndim - 2)), -1]
        h = F.linear(x_, down.to(x.dtype))
        h = h * gate.to(h.dtype).reshape(per_sample)
        if bias is not None:  # ω @ basis_bias as m more rank channels whose activation is ω itself
            omega, basis_bias = bias
            h = torch.cat([h, omega.to(h.dtype).reshape(per_sample).expand(*h.shape[:-1], -1)], dim=-1)
            up = torch.cat([up, basis_bias.t()], dim=1)
        flat_y, flat_h = y_.reshape(-1, y_.shape[-1]), h.reshape(-1, h.shape[-1]).to(y.dtype)
        weight = up.t().to(y.dtype)
        # y + h @ up^T in one GEMM (beta = 1). In place -- no copy of y -- when y is this projection's own
        # output and no graph is recorded: under autograd, writing into a view of y costs copies in backward.
        if self.in_place and not torch.is_grad_enabled():
            out = flat_y.addmm_(flat_h, weight)
        else:
            out = torch.addmm(flat_y, flat_h, weight)
        out = out.reshape(y_.shape)
        return out.movedim(-1, 1) if moved else out

    def _channels_first(self, x: torch.Tensor, y: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
                        gate: torch.Tensor, bias: OmegaBias) -> torch.Tensor:
        spatial = [1] * (x.ndim - 2)
        h = _conv1x1(x, down.to(x.dtype))
        h = h * gate.to(h.dtype).reshape(*gate.shape, *spatial)
        delta = _conv1x1(h, up.to(h.dtype))
        if bias is not None:
            omega, basis_bias = bias
            shift = omega.to(delta.dtype) @ basis_bias.to(delta.dtype)  # [N, d_out]
            delta = delta.add_(shift.reshape(*shift.shape, *spatial))
        return y.add_(delta) if self.in_place and delta.dtype == y.dtype else y + delta

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def _conv1x1(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``matrix`` ([out, in]) applied along dim 1 of a ``[N, C, ...]`` activation, as a kernel-1 convolution."""
    return F.conv2d(x, matrix[:, :, None, None]) if x.ndim == 4 else F.conv1d(x, matrix[:, :, None])
