"""Multi-head attention through torch's fused ``scaled_dot_product_attention``.

The reference networks compute ``softmax(q^T k / sqrt(d))`` with an fp32 softmax; SDPA does the same in fp32
and accumulates the softmax in fp32 in its fused bf16/fp16 kernels, so one call serves both. The fused kernels
(flash / memory-efficient on CUDA, flash on the CPU) need unit stride along ``d``; without it SDPA silently
falls back to its unfused math path, which materialises the whole attention matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` over ``[batch, heads, tokens, d]`` tensors (any strides)."""
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v)


def merge_heads(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Attention output ``[N, heads, H*W, d]`` -> ``[N, heads*d, H, W]`` (channel ``head*d + c``), laid out in
    memory like ``like`` (the block's input): mixing layouts makes every later convolution convert its weights."""
    n, _, height, width = like.shape
    out = a.transpose(-1, -2).reshape(n, -1, height, width)
    channels_last = like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous()
    return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
