"""The ``diffusers-unet`` and ``diffusers-dit`` declarations (the ``loracli.models`` entry points), free of torch.

Listing models reads these names, presets and descriptions without importing torch or diffusers; the
builders import the networks (``unet.py``, ``dit.py``, which re-export their spec as ``SPEC``) on first call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loracli.registry import AttentionSite, ModelSpec, Preset

RECIPES = Path(__file__).resolve().parent / "configs"


def _build_unet(**config: Any) -> Any:
    from loracli_diffusers.unet import DiffusersUNet

    return DiffusersUNet(**config)


def _build_dit(**config: Any) -> Any:
    from loracli_diffusers.dit import DiffusersDiT

    return DiffusersDiT(**config)


def _attention_sites(net: Any) -> list[AttentionSite]:
    from loracli_diffusers.common import attention_sites

    return attention_sites(net)


def _unet_embedding_channels(net: Any) -> int:
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
TINY_UNET = {
    "block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8, "attention_head_dim": 8,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
}

UNET = ModelSpec(
    name="diffusers-unet",
    family="ddpm",
    build=_build_unet,
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
    attention_sites=_attention_sites,
    embedding_tap=lambda config: "emb_tap" if config.get("scale_shift", True) else None,
    embedding_channels=_unet_embedding_channels,
    description="diffusers' UNet2DModel (DDPM U-Nets in diffusers format; loracli-diffusers)",
)


TINY_DIT = {"num_attention_heads": 2, "attention_head_dim": 16, "num_layers": 2, "patch_size": 4}

DIT = ModelSpec(
    name="diffusers-dit",
    family="ddpm",
    build=_build_dit,
    presets={
        "tiny": Preset(
            config={"dit": TINY_DIT, "img_resolution": 32, "img_channels": 3, "diffusion_steps": 1000,
                    "noise_schedule": "linear", "learn_sigma": True, "fixed_variance": "small",
                    "prediction": "epsilon"},
            description="32x32 RGB pixels, patch 4, width 32 (2 heads), 2 blocks; DiT's process (linear, T=1000, "
                        "learned variance); class-conditional",
            sampling={"sampler": "ancestral", "steps": 100},
            reference="loracli's own (diffusers' DiTTransformer2DModel, pixel space)",
            recipe=str(RECIPES / "diffusers-dit-tiny.toml"),
        ),
    },
    default_preset="tiny",
    attention_sites=_attention_sites,
    embedding_tap=lambda config: "emb_tap" if config.get("scale_shift", True) else None,
    embedding_channels=lambda net: int(net.dit.inner_dim),
    description="diffusers' DiTTransformer2DModel in pixel space (class-conditional; loracli-diffusers)",
)
