"""The EDM configurations of the paper and of NVlabs/edm's README, with their sampler and LoRA defaults."""

from __future__ import annotations

from typing import Any, Mapping

from loracli.registry import Preset

_EDM_README = "NVlabs/edm README (training table) and train.py"
_CIFAR = dict(precond="edm", img_resolution=32, img_channels=3, augment_dim=9, dropout=0.13, use_fp16=False)
_64PX = dict(precond="edm", img_resolution=64, img_channels=3, augment_dim=9, channel_mult=[1, 2, 2, 2],
             use_fp16=False)
_CIFAR_SAMPLING = {"sampler": "heun", "steps": 18}
_64PX_SAMPLING = {"sampler": "heun", "steps": 40}

PRESETS: dict[str, Preset] = {
    "cifar10": Preset(
        config=dict(_CIFAR, arch="ddpmpp"),
        description="DDPM++ with EDM preconditioning, CIFAR-10 32x32 (EDM config F); --label-dim 10 for cond",
        conditions={"uc-lora": {"bases": 18}},
        sampling=_CIFAR_SAMPLING,
        reference=f"{_EDM_README}: --arch=ddpmpp --precond=edm (edm-cifar10-32x32-*-vp.pkl)",
    ),
    "cifar10-ncsnpp": Preset(
        config=dict(_CIFAR, arch="ncsnpp"),
        description="NCSN++ with EDM preconditioning, CIFAR-10 32x32; --label-dim 10 for cond",
        conditions={"uc-lora": {"bases": 18}},
        sampling=_CIFAR_SAMPLING,
        reference=f"{_EDM_README}: --arch=ncsnpp --precond=edm (edm-cifar10-32x32-*-ve.pkl)",
    ),
    "ffhq64": Preset(
        config=dict(_64PX, arch="ddpmpp", dropout=0.05),
        description="DDPM++ (cres 1,2,2,2) with EDM preconditioning, FFHQ 64x64",
        conditions={"uc-lora": {"bases": 20}},
        sampling=_64PX_SAMPLING,
        reference=f"{_EDM_README}: --arch=ddpmpp --cres=1,2,2,2 --dropout=0.05 --augment=0.15",
    ),
    "ffhq64-ncsnpp": Preset(
        config=dict(_64PX, arch="ncsnpp", dropout=0.05),
        description="NCSN++ (cres 1,2,2,2) with EDM preconditioning, FFHQ 64x64",
        conditions={"uc-lora": {"bases": 20}},
        sampling=_64PX_SAMPLING,
        reference=f"{_EDM_README}: --arch=ncsnpp --cres=1,2,2,2 --dropout=0.05 --augment=0.15",
    ),
    "afhqv2-64": Preset(
        config=dict(_64PX, arch="ddpmpp", dropout=0.25),
        description="DDPM++ (cres 1,2,2,2) with EDM preconditioning, AFHQv2 64x64",
        conditions={"uc-lora": {"bases": 20}},
        sampling=_64PX_SAMPLING,
        reference=f"{_EDM_README}: --arch=ddpmpp --cres=1,2,2,2 --dropout=0.25 --augment=0.15",
    ),
    "afhqv2-64-ncsnpp": Preset(
        config=dict(_64PX, arch="ncsnpp", dropout=0.25),
        description="NCSN++ (cres 1,2,2,2) with EDM preconditioning, AFHQv2 64x64",
        conditions={"uc-lora": {"bases": 20}},
        sampling=_64PX_SAMPLING,
        reference=f"{_EDM_README}: --arch=ncsnpp --cres=1,2,2,2 --dropout=0.25 --augment=0.15",
    ),
    "imagenet64": Preset(
        config=dict(precond="edm", arch="adm", img_resolution=64, img_channels=3, label_dim=1000, dropout=0.10,
                    use_fp16=False),
        description="ADM with EDM preconditioning, class-conditional ImageNet 64x64",
        sampling={"sampler": "heun", "steps": 256, "S_churn": 40, "S_min": 0.05, "S_max": 50, "S_noise": 1.003},
        reference=f"{_EDM_README}: --arch=adm --cond=1 --dropout=0.10 --augment=0 (edm-imagenet-64x64-cond-adm.pkl)",
    ),
}

# Settings that shape training only; a network differing only in these still gets its preset's defaults.
_TRAINING_ONLY = ("dropout", "label_dropout", "use_fp16")
# Chosen per network, never by the preset.
_PER_NETWORK = ("label_dim", "scale_shift")


def match_preset(config: Mapping[str, Any]) -> str | None:
    """The preset describing the same network as ``config``: an exact match, else the first with the same
    architecture (so a converted checkpoint samples with its preset's defaults), else ``None``."""
    from loracli.models.edm.config import full_config  # imports the networks; the presets themselves stay light

    full = full_config(config)

    def same(preset_config: Mapping[str, Any], ignore: tuple[str, ...]) -> bool:
        other = full_config(preset_config)
        keys = (set(full) | set(other)) - set(ignore)
        return all(full.get(k) == other.get(k) for k in keys)

    for ignore in (_PER_NETWORK, _PER_NETWORK + _TRAINING_ONLY):
        for name, preset in PRESETS.items():
            if same(preset.config, ignore):
                return name
    return None
