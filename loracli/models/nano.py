"""nano: loracli's own small U-Net for fast experiments (ddpm family: epsilon prediction over integer t).

Why ddpm family: nano is the model on which TimeLoRA and ClassLoRA -- the paper's discrete-time variants -- are
demonstrated cheaply, and its integer timesteps index TimeLoRA's omega table directly. Its blocks follow
improved-diffusion (GroupNorm, scale-shift ResBlocks, multi-head self-attention at 16x16 and 8x8), sized to
learn the built-in data on a laptop CPU in minutes and to run at thousands of images/s on one GPU.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from loracli.nn import Conv2d, GroupNorm, Linear, PositionalEmbedding, attention, merge_heads
from loracli.models.specs import NANO as SPEC  # noqa: F401 -- declared torch-free there
from loracli.registry import AttentionSite


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the second norm modulated by scale-and-shift from the embedding."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, dropout: float) -> None:
        super().__init__()
        self.norm0 = GroupNorm(in_channels)
        self.conv0 = Conv2d(in_channels, out_channels, 3)
        self.affine = Linear(emb_channels, 2 * out_channels) if emb_channels else None
        self.norm1 = GroupNorm(out_channels)
        self.dropout = dropout
        self.conv1 = Conv2d(out_channels, out_channels, 3, init_weight=0)
        self.skip = Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        h = self.norm1(h)
        if self.affine is not None:
            scale, shift = self.affine(emb).to(h.dtype)[:, :, None, None].chunk(2, dim=1)
            h = torch.addcmul(shift, h, scale + 1)
        h = self.conv1(F.dropout(F.silu(h), p=self.dropout, training=self.training))
        return h + (self.skip(x) if self.skip is not None else x)


class AttentionBlock(nn.Module):
    """Self-attention: ``x + proj(attention(qkv(norm(x))))``; qkv channels ordered ``[3, heads, d]``."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = GroupNorm(channels)
        self.qkv = Conv2d(channels, 3 * channels, 1)
        self.proj = Conv2d(channels, channels, 1, init_weight=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        # [n, 3, heads, hw, d], contiguous in d so SDPA can use its fused kernels
        qkv = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).contiguous()
        a = attention(qkv[:, 0], qkv[:, 1], qkv[:, 2])  # [n, heads, hw, d]
        return x + self.proj(merge_heads(a, like=x))


class NanoUNet(nn.Module):
    """A compact U-Net over integer timesteps: ``net(x, t, class_labels) -> epsilon`` (+ variance if learned)."""

    def __init__(self, img_resolution: int = 32, img_channels: int = 3, label_dim: int = 0,
                 model_channels: int = 32, channel_mult: Sequence[int] = (1, 2, 2), num_blocks: int = 1,
                 attn_resolutions: Sequence[int] = (16, 8), channels_per_head: int = 32, dropout: float = 0.0,
                 diffusion_steps: int = 1000, noise_schedule: str = "cosine", learn_sigma: bool = False,
                 scale_shift: bool = True) -> None:
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.diffusion_steps, self.noise_schedule, self.learn_sigma = diffusion_steps, noise_schedule, learn_sigma
        emb_channels = 4 * model_channels if scale_shift else 0
        if scale_shift:
            self.map_noise = PositionalEmbedding(model_channels)
            self.map_layer0 = Linear(model_channels, emb_channels)
            self.map_layer1 = Linear(emb_channels, emb_channels)
            self.map_label = Linear(label_dim, emb_channels, bias=False) if label_dim else None
            self.emb_tap = nn.Identity()

        def heads(ch: int) -> int:
            return max(1, ch // channels_per_head)

        self.conv_in = Conv2d(img_channels, model_channels, 3)
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        skips, ch, res = [model_channels], model_channels, img_resolution
        for level, mult in enumerate(channel_mult):
            for _ in range(num_blocks):
                stage = nn.ModuleDict({"res": ResBlock(ch, model_channels * mult, emb_channels, dropout)})
                ch = model_channels * mult
                if res in attn_resolutions:
                    stage["attn"] = AttentionBlock(ch, heads(ch))
                self.down.append(stage)
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.ModuleDict({"downsample": Conv2d(ch, ch, 3, down=True)}))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleDict({"res0": ResBlock(ch, ch, emb_channels, dropout), "attn": AttentionBlock(ch, heads(ch)),
                                  "res1": ResBlock(ch, ch, emb_channels, dropout)})
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_blocks + 1):
                stage = nn.ModuleDict({"res": ResBlock(ch + skips.pop(), model_channels * mult, emb_channels, dropout)})
                ch = model_channels * mult
                if res in attn_resolutions:
                    stage["attn"] = AttentionBlock(ch, heads(ch))
                if level > 0 and i == num_blocks:
                    stage["upsample"] = Conv2d(ch, ch, 3, up=True)
                    res *= 2
                self.up.append(stage)
        self.norm_out = GroupNorm(ch)
        self.conv_out = Conv2d(ch, img_channels * (2 if learn_sigma else 1), 3, init_weight=0)

    def embed(self, t: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor | None:
        if not hasattr(self, "map_noise"):
            return None
        emb = self.map_noise(t.to(torch.float32) * (1000.0 / self.diffusion_steps))
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None and class_labels is not None:
            emb = emb + self.map_label(class_labels.to(emb.dtype))
        return self.emb_tap(F.silu(emb))

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(t, class_labels)
        h = self.conv_in(x)
        skips = [h]
        for stage in self.down:
            if "downsample" in stage:
                h = stage["downsample"](h)
            else:
                h = stage["res"](h, emb)
                if "attn" in stage:
                    h = stage["attn"](h)
            skips.append(h)
        h = self.mid["res1"](self.mid["attn"](self.mid["res0"](h, emb)), emb)
        for stage in self.up:
            h = stage["res"](torch.cat([h, skips.pop()], dim=1), emb)
            if "attn" in stage:
                h = stage["attn"](h)
            if "upsample" in stage:
                h = stage["upsample"](h)
        return self.conv_out(F.silu(self.norm_out(h)))


def attention_sites(net: nn.Module) -> list[AttentionSite]:
    return [AttentionSite(block=name, norm=f"{name}.norm", qkv=f"{name}.qkv", proj=f"{name}.proj",
                          channels=m.qkv.in_channels, heads=m.heads)
            for name, m in net.named_modules() if isinstance(m, AttentionBlock)]
