"""dit: a small Diffusion Transformer (Peebles & Xie, 2023) in pixel space, ddpm family.

The network follows facebookresearch/DiT's ``models.py`` layer for layer, with its parameter names (so its
state dicts map one to one): a patch embedding (a stride-p convolution) plus a fixed 2-D sin-cos position
embedding, a timestep embedder (256 sinusoidal frequencies, then Linear-SiLU-Linear) and a label embedder
(a table with one extra "null" row when labels are dropped for classifier-free guidance), whose sum c drives
adaLN-Zero in every block: ``x + gate · attn(norm(x)·(1 + scale) + shift)`` and the same for the MLP, the six
vectors from ``Linear(SiLU(c))`` initialised to zero, so every block starts as the identity. The final layer
modulates its norm the same way and projects each token back to a p×p patch (zero-initialised). Every layer
draws its own reference initialisation in ``reset_parameters`` (xavier-uniform Linears, N(0, 0.02) timestep MLP
and label table, zero adaLN and output layers), so no parent re-initialises its children.

Why ddpm family: DiT is trained on discrete timesteps with IDDPM's diffusion (its own code is a copy of
improved-diffusion's), and TimeLoRA -- one arm of the adaLN-Zero versus attention-LoRA study -- needs integer
timesteps. ``scale_shift=False`` (``--only-lora``) removes every adaLN modulation and both embedders: the norms
stay plain, the gates are 1, and a condition reaches the network only through attention adapters, if any.

Differences from the reference: class labels arrive as vectors ``[N, label_dim]`` (loracli's contract), which
weight the rows of the label table (a one-hot vector selects one row, as the reference's lookup does; an
all-zero vector -- no class given -- selects the null row when there is one); the position embedding is a
non-persistent buffer, recomputed at build time rather than stored in checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loracli.nn import PositionalEmbedding, attention
from loracli.models.specs import DIT as SPEC  # noqa: F401 -- declared torch-free there
from loracli.registry import AttentionSite

FREQUENCY_CHANNELS = 256  # the timestep embedder's sinusoidal input width (DiT's frequency_embedding_size)


def sincos_1d(channels: int, positions: torch.Tensor) -> torch.Tensor:
    """``[sin(p ω), cos(p ω)]`` with ``ω_i = 10000^(-i / (channels/2))``: ``[len(positions), channels]`` (MAE's)."""
    omega = 1.0 / 10000 ** (torch.arange(channels // 2, dtype=torch.float64) / (channels / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(channels: int, grid: int) -> torch.Tensor:
    """The fixed position embedding of a ``grid × grid`` token map, ``[grid², channels]``, tokens row-major.

    As the reference: the first half of the channels encodes a token's column, the second half its row.
    """
    if channels % 4:
        raise ValueError(f"the 2-D sin-cos position embedding needs hidden_size divisible by 4; got {channels}")
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([sincos_1d(channels // 2, cols.reshape(-1)), sincos_1d(channels // 2, rows.reshape(-1))],
                     dim=1).to(torch.float32)


class Linear(nn.Linear):
    """``nn.Linear`` with one of DiT's initialisations, drawn in ``reset_parameters`` (so re-seeding a built
    network by module, as ``build_model(seed=)`` may, re-draws the same distribution): ``"xavier"`` (xavier
    uniform), ``"normal"`` (N(0, 0.02)) or ``"zero"`` weights; the bias is always zero."""

    def __init__(self, in_features: int, out_features: int, init: str = "xavier") -> None:
        if init not in ("xavier", "normal", "zero"):
            raise ValueError(f"unknown init {init!r}")
        self.init = init  # read by reset_parameters, which nn.Linear's constructor calls
        super().__init__(in_features, out_features)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.init == "xavier":
            nn.init.xavier_uniform_(self.weight)
        elif self.init == "normal":
            nn.init.normal_(self.weight, std=0.02)
        else:
            nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


class PatchConv(nn.Conv2d):
    """The patch embedding's stride-p convolution, initialised like a Linear over its flattened weight."""

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight.view(self.weight.shape[0], -1))
        nn.init.zeros_(self.bias)


class LabelTable(nn.Embedding):
    """The label embedder's table, N(0, 0.02) as the reference initialises it."""

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=0.02)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x · (1 + scale) + shift`` per sample, over tokens ``[N, T, D]``."""
    return x * (1 + scale[:, None]) + shift[:, None]


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches to tokens: ``[N, C, H, W] -> [N, (H/p)·(W/p), D]``, row-major."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.proj = PatchConv(in_channels, hidden_size, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """Sinusoidal frequencies of t (``[cos, sin]``, max period 10000), then Linear-SiLU-Linear."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.frequencies = PositionalEmbedding(FREQUENCY_CHANNELS, max_positions=10000)
        self.mlp = nn.Sequential(Linear(FREQUENCY_CHANNELS, hidden_size, init="normal"), nn.SiLU(),
                                 Linear(hidden_size, hidden_size, init="normal"))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.frequencies(t.to(torch.float32)))


class LabelEmbedder(nn.Module):
    """Class vectors weight the rows of a table; with ``dropout > 0`` a null row, used for dropped labels."""

    def __init__(self, label_dim: int, hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.label_dim, self.dropout = label_dim, dropout
        self.embedding_table = LabelTable(label_dim + (1 if dropout > 0 else 0), hidden_size)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        weights = labels.to(self.embedding_table.weight.dtype)
        if self.dropout > 0:
            null = weights.abs().sum(dim=1, keepdim=True) == 0  # no class given
            if self.training:
                dropped = torch.rand(len(weights), 1, device=weights.device) < self.dropout
                weights, null = weights.masked_fill(dropped, 0), null | dropped
            weights = torch.cat([weights, null.to(weights.dtype)], dim=1)
        return weights @ self.embedding_table.weight


class Attention(nn.Module):
    """Multi-head self-attention over tokens; the fused qkv output is laid out ``[3, heads, d]`` (timm's)."""

    def __init__(self, hidden_size: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = Linear(hidden_size, 3 * hidden_size)
        self.proj = Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, channels = x.shape
        q, k, v = self.qkv(x).reshape(n, tokens, 3, self.heads, channels // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(attention(q, k, v).transpose(1, 2).reshape(n, tokens, channels))


class Mlp(nn.Module):
    """Linear, GELU (tanh approximation), Linear."""

    def __init__(self, hidden_size: int, mlp_hidden: int) -> None:
        super().__init__()
        self.fc1 = Linear(hidden_size, mlp_hidden)
        self.fc2 = Linear(mlp_hidden, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """Pre-norm attention and MLP, each modulated by adaLN-Zero (shift, scale, gate) unless ``scale_shift`` is off."""

    def __init__(self, hidden_size: int, heads: int, mlp_ratio: float, scale_shift: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        if scale_shift:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(hidden_size, 6 * hidden_size, init="zero"))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        if c is None:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """Norm (adaLN-modulated unless ``scale_shift`` is off), then each token to a p×p patch of outputs."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, scale_shift: bool) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = Linear(hidden_size, patch_size * patch_size * out_channels, init="zero")
        if scale_shift:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(hidden_size, 2 * hidden_size, init="zero"))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        x = self.norm_final(x)
        if c is not None:
            shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
            x = modulate(x, shift, scale)
        return self.linear(x)


class DiT(nn.Module):
    """``net(x, t, class_labels) -> epsilon`` (+ variance channels when ``learn_sigma``) over integer t."""

    def __init__(self, img_resolution: int = 16, img_channels: int = 3, label_dim: int = 0, patch_size: int = 2,
                 hidden_size: int = 128, depth: int = 4, num_heads: int = 4, mlp_ratio: float = 4.0,
                 label_dropout: float = 0.1, diffusion_steps: int = 1000, noise_schedule: str = "linear",
                 learn_sigma: bool = True, scale_shift: bool = True) -> None:
        super().__init__()
        if img_resolution % patch_size:
            raise ValueError(f"img_resolution {img_resolution} is not a multiple of patch_size {patch_size}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} does not split into {num_heads} heads")
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.patch_size, self.hidden_size = patch_size, hidden_size
        self.diffusion_steps, self.noise_schedule, self.learn_sigma = diffusion_steps, noise_schedule, learn_sigma
        self.out_channels = img_channels * (2 if learn_sigma else 1)
        self.x_embedder = PatchEmbed(patch_size, img_channels, hidden_size)
        grid = img_resolution // patch_size
        self.register_buffer("pos_embed", sincos_2d(hidden_size, grid)[None], persistent=False)
        if scale_shift:
            self.t_embedder = TimestepEmbedder(hidden_size)
            self.y_embedder = LabelEmbedder(label_dim, hidden_size, label_dropout) if label_dim else None
            self.emb_tap = nn.Identity()
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio, scale_shift) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels, scale_shift)

    def embed(self, t: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor | None:
        """c = t_emb + y_emb (None without adaLN), passed through the embedding tap."""
        if not hasattr(self, "t_embedder"):
            return None
        c = self.t_embedder(t.to(torch.float32) * (1000.0 / self.diffusion_steps))
        if self.y_embedder is not None and class_labels is not None:
            c = c + self.y_embedder(class_labels)
        return self.emb_tap(c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``[N, T, p·p·C]`` (each laid out ``[p, p, C]``) -> images ``[N, C, H, W]``."""
        n, p, c = x.shape[0], self.patch_size, self.out_channels
        grid = self.img_resolution // p
        x = x.reshape(n, grid, grid, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(n, c, grid * p, grid * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        c = self.embed(t, class_labels)
        h = self.x_embedder(x) + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final_layer(h, c))


def attention_sites(net: nn.Module) -> list[AttentionSite]:
    return [AttentionSite(block=f"blocks.{i}.attn", norm=f"blocks.{i}.norm1", qkv=f"blocks.{i}.attn.qkv",
                          proj=f"blocks.{i}.attn.proj", channels=net.hidden_size, heads=block.attn.heads)
            for i, block in enumerate(net.blocks)]


def parameter_count(img_channels: int = 3, label_dim: int = 0, patch_size: int = 2, hidden_size: int = 128,
                    depth: int = 4, mlp_ratio: float = 4.0, label_dropout: float = 0.1, learn_sigma: bool = True,
                    scale_shift: bool = True, **_: object) -> int:
    """Trainable parameters of a DiT configuration, counted layer by layer from the architecture."""
    d, p, m = hidden_size, patch_size, int(hidden_size * mlp_ratio)
    out = p * p * img_channels * (2 if learn_sigma else 1)
    patch = img_channels * p * p * d + d
    block = (3 * d * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d)
    final = d * out + out
    if not scale_shift:
        return patch + depth * block + final
    timestep = FREQUENCY_CHANNELS * d + d + d * d + d
    label = (label_dim + (1 if label_dropout > 0 else 0)) * d if label_dim else 0
    return patch + timestep + label + depth * (block + 6 * d * d + 6 * d) + final + 2 * d * d + 2 * d
