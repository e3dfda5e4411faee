"""The unified U-Net block of NVlabs/edm (DDPM++, NCSN++ and ADM), with its parameter names and numerics.

One residual block -- GroupNorm, SiLU, 3x3 conv (optionally resampling), conditioning from the embedding,
GroupNorm, SiLU, dropout, 3x3 conv, skip -- optionally followed by multi-head self-attention. The attention
runs through :func:`loracli.nn.attention` (torch's fused SDPA) but keeps EDM's qkv channel layout, so
converted weights load unchanged.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from loracli.nn import Conv2d, GroupNorm, Linear, attention, merge_heads


def drop_labels(labels: torch.Tensor, p: float, batch: int) -> torch.Tensor:
    """Training-time label dropout (for classifier-free guidance): zero each sample's labels with probability p."""
    if not p:
        return labels
    keep = torch.rand([batch, 1], device=labels.device) >= p
    return labels * keep.to(labels.dtype)


def split_qkv(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EDM's fused qkv output ``[N, 3C, H, W]`` -> q, k, v as ``[N, heads, HW, C/heads]``.

    EDM interleaves q, k and v per channel inside each head: output channel ``h*(3C/heads) + c*3 + j`` is
    channel ``c`` of head ``h`` of q (j=0), k (j=1) or v (j=2).
    """
    n, c3, height, width = qkv.shape
    q, k, v = qkv.reshape(n, heads, c3 // (3 * heads), 3, height * width).permute(3, 0, 1, 4, 2).unbind(0)
    return q, k, v


class UNetBlock(nn.Module):
    """EDM's ``UNetBlock``: residual block, optional up/downsampling, optional self-attention.

    ``adaptive_scale`` (ADM) modulates the second norm as ``norm1(h)*(scale+1)+shift``; otherwise (SongUNet) the
    embedding is added before it. ``scale_shift=False`` drops the ``affine`` layer (the paper's "only LoRA"
    base): the block then ignores the embedding, which for both modes equals zero scale and zero shift.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False,
                 down: bool = False, attention: bool = False, num_heads: int | None = None,
                 channels_per_head: int = 64, dropout: float = 0, skip_scale: float = 1, eps: float = 1e-5,
                 resample_filter: Sequence[float] = (1, 1), resample_proj: bool = False,
                 adaptive_scale: bool = True, init: Mapping[str, Any] | None = None,
                 init_zero: Mapping[str, Any] | None = None, init_attn: Mapping[str, Any] | None = None,
                 scale_shift: bool = True) -> None:
        super().__init__()
        init = dict(init or {})
        init_zero = dict(init_zero) if init_zero is not None else {"init_weight": 0}
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        self.num_heads = (0 if not attention else num_heads if num_heads is not None
                          else out_channels // channels_per_head)
        self.dropout = dropout
        self.skip_scale = float(skip_scale)
        self.adaptive_scale = adaptive_scale

        # Construction order follows the reference so that a seeded build draws the same initial weights.
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter, **init)
        self.affine = (Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
                       if scale_shift else None)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, up=up, down=down,
                               resample_filter=resample_filter, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(out_channels, out_channels, 1, **init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        if self.affine is None:
            x = F.silu(self.norm1(x))
        else:
            params = self.affine(emb)[:, :, None, None].to(x.dtype)
            if self.adaptive_scale:
                scale, shift = params.chunk(2, dim=1)
                x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
            else:
                x = F.silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale
        if self.num_heads:
            x = (self.proj(self._attend(self.qkv(self.norm2(x)))) + x) * self.skip_scale
        return x

    def _attend(self, qkv: torch.Tensor) -> torch.Tensor:
        return merge_heads(attention(*split_qkv(qkv, self.num_heads)), like=qkv)
