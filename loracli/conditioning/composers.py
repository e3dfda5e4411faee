"""Where the basis weights ω come from: one small module per adapted layer, ``omega(context) -> [N, m]``.

- :class:`TimeTable` (TimeLoRA, PAPER §2.3): a learnable (T+1)×m table over integer timesteps, ω = table[t].
- :class:`ClassVector` (ClassLoRA, §2.4): ω is the class vector itself (one-hot, or soft to interpolate).
- :class:`EmbeddingMLP` (UC-LoRA, §2.5): an MLP on the network's own conditioning embedding.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from loracli import nn as lnn

OMEGA_INITS = ("linear", "random")


def hat_weights(steps: int, bases: int) -> torch.Tensor:
    """Linear interpolation over m evenly spaced knots ``t_j = j·T/(m−1)``: ``[T+1, m]``.

    Row t holds ``ω_j(t) = max(0, 1 − |t − t_j| / Δ)`` with ``Δ = T/(m−1)``: one basis is active at a knot,
    the two adjacent ones in between, and every row sums to one. With one basis, ω = 1 everywhere.
    """
    t = torch.arange(steps + 1, dtype=torch.float64)
    if bases == 1:
        return torch.ones(steps + 1, 1)
    spacing = steps / (bases - 1)
    knots = torch.arange(bases, dtype=torch.float64) * spacing
    return (1 - (t[:, None] - knots[None, :]).abs() / spacing).clamp_min(0).to(torch.float32)


class TimeTable(nn.Module):
    """TimeLoRA: ``ω = table[t]`` for the original integer timestep t (rounded, clamped to 0..T).

    ``init="linear"``: hat functions (linear interpolation between evenly spaced knots) -- an unverified
    inference (PAPER.md §2.3), not an initialisation the paper spells out. ``init="random"`` draws every entry
    i.i.d. from N(0, 1), so neighbouring timesteps start with unrelated mixtures; the paper reports no
    initialisation ablation, so this is there to run one, not to replicate a result.
    """

    def __init__(self, steps: int, bases: int, init: str = "linear") -> None:
        super().__init__()
        if init not in OMEGA_INITS:
            raise ValueError(f"unknown omega init {init!r}")
        self.steps, self.init = steps, init
        self.table = nn.Parameter(torch.empty(steps + 1, bases))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        steps, bases = self.table.shape[0] - 1, self.table.shape[1]
        with torch.no_grad():
            self.table.copy_(hat_weights(steps, bases) if self.init == "linear" else torch.randn(steps + 1, bases))

    def forward(self, context: Any) -> torch.Tensor:
        t = context.require("noise_level")  # integer timesteps need no rounding: one kernel instead of four
        index = (t.to(torch.float32).round() if t.is_floating_point() else t).clamp(0, self.steps).long()
        return nn.functional.embedding(index, self.table)

    def extra_repr(self) -> str:
        return f"steps={self.steps}, bases={self.table.shape[1]}"


class ClassVector(nn.Module):
    """ClassLoRA: ``ω = class vector`` -- one adapter per class, no trainable weights of its own.

    A one-hot vector selects its class's adapter; ``λ·e_a + (1−λ)·e_b`` blends two (λ>1 extrapolates).
    """

    def forward(self, context: Any) -> torch.Tensor:
        return context.require("class_labels")


class EmbeddingMLP(nn.Module):
    """UC-LoRA: ``ω = MLP(e)`` on the network's conditioning embedding e (noise level, class, augmentation).

    ``E → w1 → … → m``: each hidden layer is Linear (kaiming normal, zero bias), GroupNorm
    (``min(32, w // 4)`` groups, eps 1e-5) and SiLU; the output Linear has no activation. Parameter names
    (``mlp.0.0.weight`` … ``mlp.2.bias``) mirror the official ``comp_weights.*``.
    """

    def __init__(self, embedding_channels: int, widths: Sequence[int], bases: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        fan_in = embedding_channels
        for width in widths:
            layers.append(nn.Sequential(lnn.Linear(fan_in, width), lnn.GroupNorm(width), nn.SiLU()))
            fan_in = width
        layers.append(lnn.Linear(fan_in, bases))
        self.mlp = nn.Sequential(*layers)

    def forward(self, context: Any) -> torch.Tensor:
        return self.mlp(context.require("embedding"))
