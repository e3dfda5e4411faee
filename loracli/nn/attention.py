"""Multi-head attention through torch's fused ``scaled_dot_product_attention``.

The reference networks compute ``softmax(q^T k / sqrt(d))`` with an fp32 softmax; SDPA does the same in fp32
and accumulates the softmax in fp32 in its fused bf16/fp16 kernels, so one call serves both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` over ``[batch, heads, tokens, d]`` tensors."""
    return F.scaled_dot_product_attention(q, k, v)
