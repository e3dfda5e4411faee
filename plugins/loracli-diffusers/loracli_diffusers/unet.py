"""diffusers' ``UNet2DModel`` as a loracli ddpm-family base model (``diffusers-unet``).

The diffusers network is kept whole as ``net.unet`` (its state-dict keys are diffusers' own under ``unet.``),
so a converted folder loads one to one and exports back unchanged. What loracli needs around it:

- the ddpm contract ``net(x, t, class_labels) -> epsilon`` over integer timesteps; a ``v_prediction`` network's
  output is turned into epsilon here (``eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t``), so the samplers and the
  loss see epsilon whatever the network predicts;
- class vectors: the class embedding (``num_class_embeds = label_dim``) takes loracli's one-hot or soft class
  vectors as ``vectors @ embedding.weight`` (exactly the lookup for one-hot vectors);
- the embedding tap ``emb_tap``: the time (+ class) embedding every ResNet block reads, for UC-LoRA;
- ``scale_shift=False`` (``--only-lora``): no time embedding (``time_embedding`` gives nothing), no class
  embedding, and no ResNet ``time_emb_proj``: every ResNet block then computes ``conv2(act(norm2(conv1(...))))``
  without the embedding added (or, with ``resnet_time_scale_shift="scale_shift"``, without its scale and shift),
  so the timestep and class reach the network only through LoRA.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
from torch import nn

from loracli.errors import UserError
from loracli_diffusers.common import DDPMNetwork, VectorClassEmbedding
from loracli_diffusers.specs import DDPM_CIFAR10_UNET, TINY_UNET, UNET as SPEC  # noqa: F401 -- declared torch-free there

# UNet2DModel settings loracli sets itself from its own config (img_resolution, img_channels, label_dim, ...).
OWNED_KEYS = ("sample_size", "in_channels", "out_channels", "num_class_embeds", "class_embed_type")


class NoTimeEmbedding(nn.Module):
    """The time embedding of an only-LoRA network: none, so no ResNet block is modulated."""

    def forward(self, t_emb: torch.Tensor) -> None:
        return None


def check_unet_config(unet: Mapping[str, Any]) -> dict[str, Any]:
    """The diffusers UNet2DModel settings without the ones loracli owns; refuses what loracli cannot run."""
    config = {k: copy.deepcopy(v) for k, v in unet.items() if not k.startswith("_") and k not in OWNED_KEYS}
    if config.get("time_embedding_type", "positional") != "positional":
        raise UserError(f"loracli runs UNet2DModels with positional time embeddings only, not "
                        f"'{config['time_embedding_type']}'.")
    if unet.get("class_embed_type") not in (None,):
        raise UserError(f"loracli runs UNet2DModels with a class-embedding table only (class_embed_type None), not "
                        f"'{unet['class_embed_type']}'.")
    return config


class DiffusersUNet(DDPMNetwork):
    """A diffusers UNet2DModel over integer timesteps: ``net(x, t, class_labels) -> epsilon`` (+ variance)."""

    def __init__(self, unet: Mapping[str, Any], img_resolution: int = 32, img_channels: int = 3,
                 label_dim: int = 0, scale_shift: bool = True, diffusion_steps: int = 1000,
                 noise_schedule: str = "linear", learn_sigma: bool = False, fixed_variance: str = "small",
                 prediction: str = "epsilon", dropout: float | None = None) -> None:
        super().__init__(img_resolution, img_channels, label_dim, diffusion_steps, noise_schedule, learn_sigma,
                         prediction)
        from diffusers import UNet2DModel

        settings = check_unet_config(unet)
        if dropout is not None:  # a training setting (``--dropout``), on top of the architecture
            settings["dropout"] = float(dropout)
        self.unet = UNet2DModel(**settings, sample_size=self.img_resolution, in_channels=self.img_channels,
                                out_channels=self.img_channels * (2 if learn_sigma else 1),
                                num_class_embeds=(label_dim or None) if scale_shift else None)
        if self.unet.class_embedding is not None:
            self.unet.class_embedding = VectorClassEmbedding.replacing(self.unet.class_embedding)
        if scale_shift:
            self.emb_tap = nn.Identity()
            # Every block is called with ``temb=emb``; routing it through the tap here lets UC-LoRA read it
            # without editing diffusers' forward.
            self.unet.down_blocks[0].register_forward_pre_hook(self._tap_embedding, with_kwargs=True)
        else:
            self.unet.time_embedding = NoTimeEmbedding()
            for module in self.unet.modules():
                if hasattr(module, "time_emb_proj"):
                    module.time_emb_proj = None
                    module.time_embedding_norm = "default"  # nothing to scale and shift with

    def _tap_embedding(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs["temb"] = self.emb_tap(kwargs["temb"])
        return args, kwargs

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = class_labels if self.unet.class_embedding is not None else None
        return self.to_epsilon(self.unet(x, t, labels, return_dict=False)[0], x, t)
