"""The declarations of the built-in single-module networks (``nano``, ``iddpm``, ``dit``), free of torch.

The ``loracli.models`` entry points name these specs, so discovering models (``loracli models``, ``--help``)
reads names, presets and descriptions without importing torch. Each builder and attention-site function imports
its network module on first call; the networks live in ``nano.py``, ``iddpm.py`` and ``dit.py`` (which
re-export their spec as ``SPEC``).
"""

from __future__ import annotations

from typing import Any

from loracli.registry import AttentionSite, ModelSpec, Preset


def _build_nano(**config: Any) -> Any:
    from loracli.models.nano import NanoUNet

    return NanoUNet(**config)


def _nano_sites(net: Any) -> list[AttentionSite]:
    from loracli.models.nano import attention_sites

    return attention_sites(net)


def _build_iddpm(**config: Any) -> Any:
    from loracli.models.iddpm import IDDPMUNet

    return IDDPMUNet(**config)


def _iddpm_sites(net: Any) -> list[AttentionSite]:
    from loracli.models.iddpm import attention_sites

    return attention_sites(net)


def _build_dit(**config: Any) -> Any:
    from loracli.models.dit import DiT

    return DiT(**config)


def _dit_sites(net: Any) -> list[AttentionSite]:
    from loracli.models.dit import attention_sites

    return attention_sites(net)


NANO = ModelSpec(
    name="nano",
    family="ddpm",
    build=_build_nano,
    presets={
        "default": Preset(
            config={"img_resolution": 32, "model_channels": 16, "channel_mult": [1, 2, 4], "channels_per_head": 16,
                    "diffusion_steps": 1000, "noise_schedule": "cosine", "learn_sigma": False},
            description="32x32 RGB, 16 channels, mult 1,2,4, attention at 16 and 8; cosine schedule, T=1000 "
                        "(sized for the CPU: the README's run takes minutes on 2 cores)",
            conditions={"time-lora": {"bases": 11}},
            sampling={"sampler": "ancestral", "steps": 100},  # respaced; cleaner than DDIM 50 this small
            reference="loracli's own (no paper configuration)",
        ),
    },
    default_preset="default",
    attention_sites=_nano_sites,
    embedding_tap=lambda config: "emb_tap" if config.get("scale_shift", True) else None,
    embedding_channels=lambda net: net.map_layer1.out_features,
    description="loracli's small U-Net for fast experiments (CPU in minutes)",
)

_DIFFUSION = {"diffusion_steps": 4000, "noise_schedule": "cosine", "learn_sigma": True, "rescale_timesteps": True}
_ARCH = {"model_channels": 128, "num_res_blocks": 3, "attn_resolutions": [16, 8], "num_heads": 4,
         "num_heads_upsample": None, "use_scale_shift_norm": True, "img_channels": 3}
_PAPER = dict(conditions={"time-lora": {"bases": 11}}, sampling={"sampler": "ancestral", "steps": None})

IDDPM = ModelSpec(
    name="iddpm",
    family="ddpm",
    build=_build_iddpm,
    presets={
        "cifar10": Preset(
            config={"img_resolution": 32, "channel_mult": [1, 2, 2, 2], "dropout": 0.3, **_ARCH, **_DIFFUSION},
            description="CIFAR-10 32x32: 128 ch, mult 1,2,2,2, 3 blocks, attention at 16 and 8; cosine, T=4000, "
                        "hybrid loss (52,546,438 parameters)",
            reference="openai/improved-diffusion README, CIFAR-10 L_hybrid (cifar10_uncond_50M_500K.pt)",
            **_PAPER,
        ),
        "imagenet64": Preset(
            config={"img_resolution": 64, "channel_mult": [1, 2, 3, 4], "dropout": 0.0, **_ARCH, **_DIFFUSION},
            description="ImageNet 64x64: 128 ch, mult 1,2,3,4, 3 blocks, attention at 16 and 8; cosine, T=4000, "
                        "hybrid loss (121,063,942 parameters)",
            reference="openai/improved-diffusion README, ImageNet-64 L_hybrid (imagenet64_uncond_100M_1500K.pt)",
            **_PAPER,
        ),
    },
    default_preset="cifar10",
    attention_sites=_iddpm_sites,
    embedding_tap=lambda config: "emb_tap" if config.get("scale_shift", True) else None,
    embedding_channels=lambda net: net.model_channels * 4,
    description="improved-diffusion's UNetModel (IDDPM): epsilon and learned variance over T=4000 timesteps",
)

DIT = ModelSpec(
    name="dit",
    family="ddpm",
    build=_build_dit,
    presets={
        "cifar16": Preset(
            config={"img_resolution": 16, "patch_size": 2, "hidden_size": 128, "depth": 4, "num_heads": 4,
                    "mlp_ratio": 4.0, "label_dropout": 0.0, "diffusion_steps": 1000, "noise_schedule": "cosine",
                    "learn_sigma": False},
            description="16x16 RGB, patch 2 (64 tokens), hidden 128, 4 blocks of 4 heads; cosine schedule, T=1000, "
                        "epsilon only (the adaLN-Zero vs attention-LoRA study's network)",
            conditions={"time-lora": {"bases": 11}},
            sampling={"sampler": "ancestral", "steps": 100},
            reference="DiT (Peebles & Xie 2023) blocks, loracli's size",
        ),
        "tiny": Preset(
            config={"img_resolution": 8, "patch_size": 2, "hidden_size": 32, "depth": 2, "num_heads": 2,
                    "mlp_ratio": 4.0, "label_dropout": 0.0, "diffusion_steps": 100, "noise_schedule": "cosine",
                    "learn_sigma": False},
            description="8x8 RGB, hidden 32, 2 blocks, T=100: for tests",
            conditions={"time-lora": {"bases": 5}},
            sampling={"sampler": "ancestral", "steps": 20},
            reference="loracli's own (tests)",
        ),
    },
    default_preset="cifar16",
    attention_sites=_dit_sites,
    embedding_tap=lambda config: "emb_tap" if config.get("scale_shift", True) else None,
    embedding_channels=lambda net: net.hidden_size,
    description="a small Diffusion Transformer (DiT, adaLN-Zero) in pixel space, patch 2",
)
