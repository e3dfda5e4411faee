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
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from loracli.errors import UserError
from loracli.registry import ModelSpec, Preset
from loracli_diffusers.common import DDPMNetwork, VectorClassEmbedding, attention_sites

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


def embedding_channels(net: DiffusersUNet) -> int:
    return int(net.unet.time_embedding.linear_2.out_features)


# google/ddpm-cifar10-32's UNet2DModel (its config.json on the Hub), less the keys loracli owns.
DDPM_CIFAR10_UNET = {
    "act_fn": "silu", "attention_head_dim": None, "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False, "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32, "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
# Its scheduler: DDPMScheduler, linear betas 1e-4 .. 0.02 over 1000 steps, fixed_small variance, epsilon.
DDPM_CIFAR10_PROCESS = {"diffusion_steps": 1000, "noise_schedule": "linear", "learn_sigma": False,
                        "fixed_variance": "small", "prediction": "epsilon"}
RECIPES = Path(__file__).resolve().parent / "configs"
TINY_UNET = {
    "block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8, "attention_head_dim": 8,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
}

SPEC = ModelSpec(
    name="diffusers-unet",
    family="ddpm",
    build=DiffusersUNet,
    presets={
        "tiny": Preset(
            config={"unet": TINY_UNET, "img_resolution": 32, "img_channels": 3, **DDPM_CIFAR10_PROCESS},
            description="32x32 RGB, 16/32 channels, one attention level (16x16) and the middle block; DDPM "
                        "linear schedule, T=1000 (for tests and CPU trials)",
            sampling={"sampler": "ancestral", "steps": 100},
            reference="loracli's own (diffusers' UNet2DModel classes)",
            recipe=str(RECIPES / "diffusers-unet-tiny.toml"),
        ),
        "ddpm-cifar10": Preset(
            config={"unet": DDPM_CIFAR10_UNET, "img_resolution": 32, "img_channels": 3, **DDPM_CIFAR10_PROCESS},
            description="google/ddpm-cifar10-32: 128/256/256/256 channels, attention at 16x16 and in the middle "
                        "block; linear schedule, T=1000, fixed_small variance",
            sampling={"sampler": "ancestral", "steps": 1000},
            reference="Ho et al. 2020 as ported to diffusers (google/ddpm-cifar10-32)",
            recipe=str(RECIPES / "diffusers-unet-ddpm-cifar10.toml"),
        ),
    },
    default_preset="tiny",
    attention_sites=attention_sites,
    embedding_tap=lambda config: "emb_tap" if config.get("scale_shift", True) else None,
    embedding_channels=embedding_channels,
    description="diffusers' UNet2DModel (DDPM U-Nets in diffusers format; loracli-diffusers)",
)
