"""``edm``: NVlabs/edm's networks (DDPM++, NCSN++, ADM) behind its preconditioners (EDM, VP, VE, iDDPM).

Parameter and buffer names equal the reference's ``state_dict`` keys (``model.enc.16x16_block0.qkv.weight``),
so converting a snapshot is a direct copy. The built network is the preconditioner:
``net(x, sigma, class_labels=None, augment_labels=None) -> D(x; sigma)``.

This package module is the ``edm`` entry point's declaration and imports no torch (so listing models stays
fast); ``build`` and ``attention_sites`` import the networks (``config``, ``blocks``, ...) on first call.
"""

from __future__ import annotations

from typing import Any

from loracli.models.edm.presets import PRESETS
from loracli.registry import AttentionSite, ModelSpec

EMBEDDING_TAP = "model.emb_tap"


def build(precond: str = "edm", **config: Any) -> Any:
    """The preconditioned network a config describes (``ModelSpec.build``; see ``config.build``)."""
    from loracli.models.edm import config as edm_config

    return edm_config.build(precond, **config)


def attention_sites(net: Any) -> list[AttentionSite]:
    """Every U-Net block with self-attention (CIFAR-10 DDPM++: enc.16x16_block0..3, dec.8x8_in0, dec.16x16_block4)."""
    from loracli.models.edm.blocks import UNetBlock

    return [AttentionSite(block=name, norm=f"{name}.norm2", qkv=f"{name}.qkv", proj=f"{name}.proj",
                          channels=block.out_channels, heads=block.num_heads)
            for name, block in net.named_modules() if isinstance(block, UNetBlock) and block.num_heads]


def embedding_channels(net: Any) -> int:
    """The width of the embedding at ``model.emb_tap`` (512 for CIFAR-10 DDPM++, 768 for ImageNet ADM)."""
    return net.model.map_layer1.out_features


SPEC = ModelSpec(
    name="edm",
    family="edm",
    build=build,
    presets=PRESETS,
    default_preset="cifar10",
    attention_sites=attention_sites,
    embedding_tap=EMBEDDING_TAP,
    embedding_channels=embedding_channels,
    description="NVlabs/edm: DDPM++/NCSN++ (SongUNet) and ADM (DhariwalUNet) with EDM/VP/VE/iDDPM preconditioning",
)

__all__ = ["SPEC", "EMBEDDING_TAP", "attention_sites", "build"]
