"""Exponential moving averages of the weights: EDM's half-life with ramp-up, and IDDPM's fixed rate."""

from __future__ import annotations

import copy

import torch
from torch import nn


def edm_beta(step: int, batch: int, halflife_kimg: float, rampup_ratio: float | None) -> float:
    """EDM's decay per step: ``0.5 ** (batch / max(halflife_nimg, 1e-8))``, the half-life capped at
    ``rampup_ratio · nimg`` early on (``nimg`` counted before this step's images, as the reference does)."""
    halflife_nimg = halflife_kimg * 1000
    if rampup_ratio is not None:
        halflife_nimg = min(halflife_nimg, step * batch * rampup_ratio)
    return 0.5 ** (batch / max(halflife_nimg, 1e-8))


class EMA:
    """An averaged copy of ``model`` (eval mode, no gradients); ``update(step)`` after each optimiser step.

    ``beta(step)`` is the decay: ``edm_beta`` for EDM recipes, a constant (0.9999) for IDDPM's.
    Buffers (fixed filters) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, batch: int, halflife_kimg: float | None = None,
                 rampup_ratio: float | None = None, rate: float | None = None) -> None:
        if (halflife_kimg is None) == (rate is None):
            raise ValueError("give exactly one of halflife_kimg (EDM) and rate (IDDPM)")
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.batch, self.halflife_kimg, self.rampup_ratio, self.rate = batch, halflife_kimg, rampup_ratio, rate

    def beta(self, step: int) -> float:
        if self.rate is not None:
            return self.rate
        return edm_beta(step, self.batch, self.halflife_kimg, self.rampup_ratio)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move the average towards ``model``: ``ema = beta·ema + (1 − beta)·weights``."""
        weight = 1.0 - self.beta(step)
        averages = list(self.model.parameters())
        current = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(averages, current, weight)  # one multi-tensor kernel instead of one per parameter
