"""What the diffusers base models share: the process settings, class vectors, attention sites."""

from __future__ import annotations

import torch
from torch import nn

from loracli.diffusion.gaussian import named_betas
from loracli.errors import UserError
from loracli.registry import AttentionSite

PREDICTIONS = ("epsilon", "v_prediction")


class VectorClassEmbedding(nn.Embedding):
    """A diffusers class-embedding table that also takes class vectors ``[N, classes]`` (one-hot or soft):
    ``vectors @ table`` (the lookup itself for one-hot vectors). A table with one row more than the vectors
    (DiT's classifier-free-guidance row) gets a zero weight on that row."""

    @classmethod
    def replacing(cls, table: nn.Embedding) -> "VectorClassEmbedding":
        new = cls(table.num_embeddings, table.embedding_dim)
        new.load_state_dict(table.state_dict())
        return new

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if not labels.is_floating_point():
            return super().forward(labels)
        labels = labels.to(self.weight.dtype)
        if labels.shape[-1] < self.num_embeddings:
            labels = nn.functional.pad(labels, (0, self.num_embeddings - labels.shape[-1]))
        return labels @ self.weight


class DDPMNetwork(nn.Module):
    """A ddpm-family wrapper: the process it was trained for, and any prediction turned into epsilon."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, diffusion_steps: int,
                 noise_schedule: str, learn_sigma: bool, prediction: str) -> None:
        super().__init__()
        if prediction not in PREDICTIONS:
            raise UserError(f"Unknown prediction '{prediction}'; loracli runs {' and '.join(PREDICTIONS)} networks.")
        self.img_resolution, self.img_channels, self.label_dim = int(img_resolution), int(img_channels), int(label_dim)
        self.diffusion_steps, self.noise_schedule, self.learn_sigma = int(diffusion_steps), noise_schedule, learn_sigma
        self.prediction = prediction
        if prediction == "v_prediction":
            abar = torch.from_numpy(named_betas(noise_schedule, self.diffusion_steps)).neg().add(1).cumprod(0)
            self.register_buffer("sqrt_abar", abar.sqrt().float(), persistent=False)
            self.register_buffer("sqrt_one_minus_abar", (1 - abar).sqrt().float(), persistent=False)

    def to_epsilon(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t`` for a v-prediction network; else ``out`` itself."""
        if self.prediction != "v_prediction":
            return out
        c = self.img_channels
        a = self.sqrt_abar[t].reshape(-1, 1, 1, 1).to(out.dtype)
        s = self.sqrt_one_minus_abar[t].reshape(-1, 1, 1, 1).to(out.dtype)
        eps = a * out[:, :c] + s * x.to(out.dtype)
        return torch.cat([eps, out[:, c:]], dim=1) if self.learn_sigma else eps


def attention_sites(net: nn.Module) -> list[AttentionSite]:
    """Every diffusers ``Attention`` (self-attention here): separate ``to_q``/``to_k``/``to_v``, ``to_out.0``.

    The norm before it is the attention's own GroupNorm (U-Net) or its transformer block's ``norm1.norm``
    (DiT's LayerNorm inside adaLN-Zero).
    """
    from diffusers.models.attention_processor import Attention

    sites = []
    for name, m in net.named_modules():
        if isinstance(m, Attention):
            norm = f"{name}.group_norm" if m.group_norm is not None else f"{name.rpartition('.')[0]}.norm1.norm"
            sites.append(AttentionSite(block=name, norm=norm, qkv=(f"{name}.to_q", f"{name}.to_k", f"{name}.to_v"),
                                       proj=f"{name}.to_out.0", channels=m.query_dim, heads=m.heads))
    return sites
