"""diffusers' ``DiTTransformer2DModel`` as a loracli ddpm-family base model (``diffusers-dit``), in pixel space.

As for the U-Net, the diffusers network is kept whole (``net.dit``). DiT is class-conditional by construction
(every block's adaLN-Zero embeds the timestep and the class), so ``label_dim`` must be at least 1; its class
tables take loracli's class vectors (the extra classifier-free-guidance row gets weight 0, and diffusers' label
dropout is switched off: loracli trains on the labels it is given). The embedding tap is the first block's
timestep + class embedding (the one diffusers also feeds the final layer's modulation).

``scale_shift=False`` (``--only-lora``) replaces every block's adaLN-Zero by its bare LayerNorm (no shift, no
scale, attention and MLP gates fixed at 1), and the final layer's modulation by nothing (``norm_out`` without
shift and scale): the timestep embedders, class tables, ``norm1.linear`` of every block and ``proj_out_1`` are
gone, and the timestep and class reach the network only through LoRA.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
from torch import nn

from loracli.errors import UserError
from loracli_diffusers.common import DDPMNetwork, VectorClassEmbedding
from loracli_diffusers.specs import DIT as SPEC, TINY_DIT  # noqa: F401 -- declared torch-free there

OWNED_KEYS = ("sample_size", "in_channels", "out_channels", "num_embeds_ada_norm")


class PlainNorm(nn.Module):
    """adaLN-Zero without its modulation: the LayerNorm, shifts and scales 0, gates 1 (same call and outputs)."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.norm = norm
        self.emb = NoConditioning()

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        ones, zeros = x.new_ones(x.shape[0], x.shape[-1]), x.new_zeros(x.shape[0], x.shape[-1])
        return self.norm(x), ones, zeros, zeros, ones


class NoConditioning(nn.Module):
    """Stands in for the timestep + class embedding of an only-LoRA DiT (read by diffusers' final layer)."""

    def forward(self, timestep: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.zeros(timestep.shape[0], 1, device=timestep.device)


class NoModulation(nn.Module):
    """The final layer's shift and scale of an only-LoRA DiT: zero (``norm_out`` alone)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], 2 * self.channels)


def check_dit_config(dit: Mapping[str, Any]) -> dict[str, Any]:
    config = {k: copy.deepcopy(v) for k, v in dit.items() if not k.startswith("_") and k not in OWNED_KEYS}
    if config.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
        raise UserError("loracli runs DiTTransformer2DModels with adaLN-Zero (norm_type 'ada_norm_zero') only.")
    return config


class DiffusersDiT(DDPMNetwork):
    """A diffusers DiTTransformer2DModel over integer timesteps: ``net(x, t, class_labels) -> epsilon`` (+ variance)."""

    def __init__(self, dit: Mapping[str, Any], img_resolution: int = 32, img_channels: int = 3,
                 label_dim: int = 0, scale_shift: bool = True, diffusion_steps: int = 1000,
                 noise_schedule: str = "linear", learn_sigma: bool = True, fixed_variance: str = "small",
                 prediction: str = "epsilon", dropout: float | None = None) -> None:
        super().__init__(img_resolution, img_channels, label_dim, diffusion_steps, noise_schedule, learn_sigma,
                         prediction)
        from diffusers import DiTTransformer2DModel

        if label_dim < 1:
            raise UserError("diffusers-dit is class-conditional; give it classes (--label-dim, e.g. 10).")
        settings = check_dit_config(dit)
        if dropout is not None:
            settings["dropout"] = float(dropout)
        self.dit = DiTTransformer2DModel(**settings, sample_size=self.img_resolution, in_channels=self.img_channels,
                                         out_channels=self.img_channels * (2 if learn_sigma else 1),
                                         num_embeds_ada_norm=int(label_dim))
        blocks = self.dit.transformer_blocks
        if scale_shift:
            for block in blocks:
                embedder = block.norm1.emb.class_embedder
                embedder.embedding_table = VectorClassEmbedding.replacing(embedder.embedding_table)
                embedder.dropout_prob = 0.0
            self.emb_tap = nn.Identity()
            # The first block's embedding (also what the final layer reads) goes through the tap for UC-LoRA.
            blocks[0].norm1.emb.register_forward_hook(self._tap_embedding)
        else:
            for block in blocks:
                block.norm1 = PlainNorm(block.norm1.norm)
            self.dit.proj_out_1 = NoModulation(self.dit.inner_dim)

    def _tap_embedding(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return self.emb_tap(out)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        out = self.dit(x, timestep=t, class_labels=class_labels, return_dict=False)[0]
        return self.to_epsilon(out, x, t)
