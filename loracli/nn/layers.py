"""Linear, Conv2d (with FIR up/downsampling), GroupNorm and noise embeddings, numerically as in NVlabs/edm.

Parameter names and shapes follow the reference (``weight``, ``bias``, ``resample_filter``) so that converted
checkpoints load one to one. Weights are cast to the input's dtype in ``forward`` so the layers run under
bf16 autocast and in reduced precision alike.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def weight_init(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """The reference initialisations: xavier/kaiming, uniform/normal, drawn from torch's global RNG."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"unknown init mode {mode!r}")


def _draw(weight: nn.Parameter | None, bias: nn.Parameter | None, init: dict) -> None:
    """Fill a layer's weight, then its bias, as the reference constructors draw them (one draw each, in order)."""
    fans = dict(mode=init["mode"], fan_in=init["fan_in"], fan_out=init["fan_out"])
    with torch.no_grad():
        for tensor, scale in ((weight, init["weight"]), (bias, init["bias"])):
            if tensor is not None:
                tensor.copy_(weight_init(tensor.shape, **fans) * scale)


class Linear(nn.Module):
    """Fully connected layer ``x @ W.T + b`` with the reference initialisation."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init_mode: str = "kaiming_normal",
                 init_weight: float = 1, init_bias: float = 0) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.init = dict(mode=init_mode, fan_in=in_features, fan_out=out_features, weight=init_weight, bias=init_bias)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the weights (then the bias) from the global generator with the reference initialisation."""
        _draw(self.weight, self.bias, self.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), b)


def _resample_filter(taps: Sequence[float]) -> torch.Tensor:
    f = torch.as_tensor(taps, dtype=torch.float32)
    return (torch.outer(f, f) / f.sum().square())[None, None]


class Conv2d(nn.Module):
    """2-D convolution with optional FIR up- or downsampling (``kernel=0``: resampling only)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter: Sequence[float] = (1, 1), fused_resample: bool = False,
                 init_mode: str = "kaiming_normal", init_weight: float = 1, init_bias: float = 0) -> None:
        if up and down:
            raise ValueError("a Conv2d resamples up or down, not both")
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        self.init = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel,
                         weight=init_weight, bias=init_bias)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel)) if kernel else None
        self.bias = nn.Parameter(torch.empty(out_channels)) if kernel and bias else None
        self.register_buffer("resample_filter", _resample_filter(resample_filter) if up or down else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the weights (then the bias) from the global generator with the reference initialisation."""
        _draw(self.weight, self.bias, self.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) if self.weight is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.fused_resample and self.up and w is not None:
            x = F.conv_transpose2d(x, (f * 4).tile(self.in_channels, 1, 1, 1), groups=self.in_channels, stride=2,
                                   padding=max(f_pad - w_pad, 0))
            return F.conv2d(x, w, b, padding=max(w_pad - f_pad, 0))
        if self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile(self.out_channels, 1, 1, 1), groups=self.out_channels, stride=2)
        else:
            if self.up:
                x = F.conv_transpose2d(x, (f * 4).tile(self.in_channels, 1, 1, 1), groups=self.in_channels,
                                       stride=2, padding=f_pad)
            if self.down:
                x = F.conv2d(x, f.tile(self.in_channels, 1, 1, 1), groups=self.in_channels, stride=2, padding=f_pad)
            if w is not None:  # the bias goes into the convolution's epilogue: one kernel instead of two
                return F.conv2d(x, w, b, padding=w_pad)
        return x + b.reshape(1, -1, 1, 1) if b is not None else x


class GroupNorm(nn.Module):
    """Group normalisation with ``min(num_groups, C // min_channels_per_group)`` groups, as in EDM."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.fill_(1)
            self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding ``[cos(x f), sin(x f)]`` with ``f_i = max_positions^(-i / (n/2 - endpoint))``."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False) -> None:
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of the noise level (NCSN++): ``[cos(2 pi x f), sin(2 pi x f)]``."""

    def __init__(self, num_channels: int, scale: float = 16) -> None:
        super().__init__()
        self.scale = scale
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def reset_parameters(self) -> None:
        self.freqs.copy_(torch.randn(self.freqs.shape) * self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)
