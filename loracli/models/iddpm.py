"""iddpm: improved-diffusion's UNetModel (Nichol & Dhariwal 2021), the paper's discrete-time base network.

Faithful to openai/improved-diffusion ``unet.py`` at the level that matters for its checkpoints: every
state-dict key and shape is the reference's (``input_blocks.5.1.qkv.weight`` ...), so a ``model*.pt`` or
``ema_*.pt`` loads by direct copy, and fp32 outputs equal the reference's to float rounding. Layers are plain
torch layers with torch's default initialisation, as in the reference; the zero-initialised layers are the
same (each ResBlock's last conv, the attention output ``proj_out`` and the final conv).

Differences from the reference's calling convention (loracli's ``ddpm`` family contract):
- ``net(x, t, class_labels)``: ``t`` are the ORIGINAL integer timesteps; the network itself applies
  improved-diffusion's ``t * 1000 / diffusion_steps`` when ``rescale_timesteps`` (the reference does it in
  its diffusion wrapper). The diffusion settings live in the config so that a checkpoint knows its process.
- ``class_labels`` are float vectors ``[N, label_dim]``; the class embedding is ``class_labels @
  label_emb.weight`` (equal to ``nn.Embedding`` for one-hot vectors, and it interpolates soft vectors).
  ``label_dim`` replaces the reference's hard-coded 1000 classes.
- ``scale_shift=False`` is the paper's "only LoRA" base: no time-embedding MLP, no ``label_emb``, no
  ResBlock ``emb_layers`` (the ResBlocks normalise without modulation). ``use_scale_shift_norm`` is the
  reference's own switch between scale-and-shift and additive embedding injection.
- Attention runs through torch's fused SDPA; the reference's legacy qkv layout (per head ``[q | k | v]``,
  FORMATS.md 2.3) is handled by reshapes, so the qkv weights are the reference's, unpermuted.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from loracli.nn import attention, zero_init
from loracli.models.specs import IDDPM as SPEC  # noqa: F401 -- declared torch-free there
from loracli.registry import AttentionSite


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000) -> torch.Tensor:
    """``[cos(t f), sin(t f)]`` with ``f_i = exp(-ln(max_period) i / (dim/2))``, computed as the reference does.

    Mathematically EDM's ``PositionalEmbedding(endpoint=False)``; kept separate because the reference forms
    the frequencies through ``exp`` in fp32, and at t ~ 1000 the last-bit difference of ``10000 ** -x`` would
    already show in the outputs.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class GroupNorm32(nn.GroupNorm):
    """The reference's normalisation: 32 groups, eps 1e-5, always computed in fp32."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


zeroed = zero_init  # the reference's ``zero_module``, kept zero when the network is re-seeded by name


class ClassEmbedding(nn.Module):
    """``class_vectors @ weight``: ``nn.Embedding``'s weight and init, applied to one-hot or soft vectors."""

    def __init__(self, num_classes: int, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.copy_(torch.randn(self.weight.shape))

    def forward(self, class_labels: torch.Tensor) -> torch.Tensor:
        return class_labels.to(self.weight.dtype) @ self.weight


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, embedding injection, GroupNorm-SiLU-dropout-conv; skip added with scale 1.

    ``emb_channels=0`` builds the unconditioned block of the only-LoRA base (no ``emb_layers``).
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, dropout: float,
                 use_scale_shift_norm: bool) -> None:
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(in_channels), nn.SiLU(),
                                       nn.Conv2d(in_channels, out_channels, 3, padding=1))
        emb_width = out_channels * (2 if use_scale_shift_norm else 1)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_width)) if emb_channels else None
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        zeroed(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = (nn.Identity() if in_channels == out_channels
                                else nn.Conv2d(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        h = self.in_layers(x)
        if self.emb_layers is None:
            h = self.out_layers(h)
        else:
            emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
            if self.use_scale_shift_norm:
                scale, shift = emb_out.chunk(2, dim=1)
                h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
            else:
                h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """``x + proj_out(attention(qkv(norm(x))))`` over flattened positions, with Conv1d projections.

    qkv channels follow the reference's legacy layout ``[heads, (q | k | v), d]``: head ``h`` owns rows
    ``h*3d .. h*3d + 3d - 1``, split into contiguous q, k and v chunks of ``d = C / heads``.
    """

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels cannot be split into {num_heads} attention heads")
        self.num_heads = num_heads
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = zeroed(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        # [b, heads, 3, positions, d], made contiguous: SDPA's fused kernels need unit stride on d
        qkv = qkv.reshape(b, self.num_heads, 3, c // self.num_heads, -1).transpose(-1, -2).contiguous()
        a = attention(*qkv.unbind(2))  # [b, heads, positions, d]
        h = self.proj_out(a.transpose(-1, -2).reshape(b, c, -1))
        return (x + h).reshape(b, c, *spatial)


class Downsample(nn.Module):
    """3x3 convolution with stride 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class EmbedSequential(nn.Sequential):
    """A sequence of layers in which ResBlocks also receive the embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class IDDPMUNet(nn.Module):
    """improved-diffusion's UNetModel: ``net(x, t, class_labels) -> epsilon`` (+ variance channels if learned).

    ``attn_resolutions`` are pixel resolutions (the reference's ``--attention_resolutions``); the reference's
    downsampling rates are ``img_resolution // r``. ``num_heads_upsample=None`` uses ``num_heads``.
    """

    def __init__(self, img_resolution: int = 32, img_channels: int = 3, label_dim: int = 0,
                 model_channels: int = 128, channel_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 3,
                 attn_resolutions: Sequence[int] = (16, 8), num_heads: int = 4, num_heads_upsample: int | None = None,
                 dropout: float = 0.0, use_scale_shift_norm: bool = True, learn_sigma: bool = True,
                 diffusion_steps: int = 4000, noise_schedule: str = "cosine", rescale_timesteps: bool = True,
                 scale_shift: bool = True) -> None:
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.model_channels = model_channels
        self.diffusion_steps, self.noise_schedule = diffusion_steps, noise_schedule
        self.learn_sigma, self.rescale_timesteps = learn_sigma, rescale_timesteps
        heads_up = num_heads if num_heads_upsample in (None, -1) else num_heads_upsample
        attention_ds = {img_resolution // r for r in attn_resolutions}
        emb_channels = model_channels * 4 if scale_shift else 0

        self.time_embed = (nn.Sequential(nn.Linear(model_channels, emb_channels), nn.SiLU(),
                                         nn.Linear(emb_channels, emb_channels)) if scale_shift else None)
        self.label_emb = ClassEmbedding(label_dim, emb_channels) if scale_shift and label_dim else None
        self.emb_tap = nn.Identity()

        def res_block(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_channels, dropout, use_scale_shift_norm)

        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(img_channels, model_channels, 3, padding=1))])
        skips, ch, ds = [model_channels], model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res_block(ch, model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_ds:
                    layers.append(AttentionBlock(ch, num_heads))
                self.input_blocks.append(EmbedSequential(*layers))
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(EmbedSequential(Downsample(ch)))
                skips.append(ch)
                ds *= 2
        self.middle_block = EmbedSequential(res_block(ch, ch), AttentionBlock(ch, num_heads), res_block(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res_block(ch + skips.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_ds:
                    layers.append(AttentionBlock(ch, heads_up))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
        out_channels = img_channels * (2 if learn_sigma else 1)
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), zeroed(nn.Conv2d(ch, out_channels, 3, padding=1)))

    def embed(self, t: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor | None:
        """The vector every ResBlock's ``emb_layers`` receives (time MLP + class embedding), through the tap."""
        if self.time_embed is None:
            return None
        t = t.float() * (1000.0 / self.diffusion_steps) if self.rescale_timesteps else t.float()
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        if self.label_emb is not None and class_labels is not None:
            emb = emb + self.label_emb(class_labels)
        return self.emb_tap(emb)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(t, class_labels)
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def attention_sites(net: nn.Module) -> list[AttentionSite]:
    """Every AttentionBlock; ``qkv`` and ``proj_out`` are Conv1d layers applied to ``[N, C, H*W]``."""
    return [AttentionSite(block=name, norm=f"{name}.norm", qkv=f"{name}.qkv", proj=f"{name}.proj_out",
                          channels=m.qkv.in_channels, heads=m.num_heads)
            for name, m in net.named_modules() if isinstance(m, AttentionBlock)]
