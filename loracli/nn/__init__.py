"""Layers shared by the base networks, with the reference code's initialisations and numerics."""

from loracli.nn.attention import attention, merge_heads
from loracli.nn.init import reseed_by_name, unseeded_modules, zero_init
from loracli.nn.layers import (
    Conv2d,
    FourierEmbedding,
    GroupNorm,
    Linear,
    PositionalEmbedding,
    weight_init,
)

__all__ = ["Conv2d", "FourierEmbedding", "GroupNorm", "Linear", "PositionalEmbedding", "attention", "merge_heads",
           "reseed_by_name", "unseeded_modules", "weight_init", "zero_init"]
