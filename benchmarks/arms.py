"""The networks the benchmarks compare: per model, the baseline and its LoRA arms, on the paper's presets.

edm (CIFAR-10 DDPM++, EDM preconditioning): ``baseline``, ``uc-lora``, ``only-lora`` (UC-LoRA with the conv
blocks' scale-and-shift removed); iddpm (CIFAR-10): ``baseline``, ``time-lora``; nano: ``baseline``,
``time-lora``. ``tiny`` shrinks the networks (same code paths) for smoke runs on a CPU.
"""

from __future__ import annotations

from typing import Any

ARMS: dict[str, dict[str, dict[str, Any]]] = {
    "edm": {"baseline": {"cond": "none"}, "uc-lora": {"cond": "uc-lora"},
            "only-lora": {"cond": "uc-lora", "only_lora": True}},
    "iddpm": {"baseline": {"cond": "none"}, "time-lora": {"cond": "time-lora"}},
    "nano": {"baseline": {"cond": "none"}, "time-lora": {"cond": "time-lora"}},
}
PRESETS = {"edm": "cifar10", "iddpm": "cifar10", "nano": "default"}
TINY: dict[str, dict[str, Any]] = {
    "edm": {"model_channels": 32, "channel_mult": [1, 2], "num_blocks": 1},
    "iddpm": {"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [16]},
    "nano": {},
}


def check(model: str, arms: list[str]) -> list[str]:
    unknown = [a for a in arms if a not in ARMS[model]]
    if unknown:
        raise SystemExit(f"unknown arm(s) {', '.join(unknown)} for {model}; choose from {', '.join(ARMS[model])}")
    return arms


def build(model: str, arm: str, tiny: bool = False, label_dim: int = 0, **overrides: Any) -> Any:
    """The arm's network, freshly initialised (``loracli.create_model`` on the model's benchmark preset)."""
    import loracli

    settings = ARMS[model][arm]
    network = {**(TINY[model] if tiny else {}), **overrides}
    return loracli.create_model(model, preset=PRESETS[model], cond=settings["cond"],
                                only_lora=settings.get("only_lora", False), label_dim=label_dim, **network)
