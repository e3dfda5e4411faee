"""loracli: LoRA conditioning on the attention layers of diffusion U-Nets.

Public API::

    net = loracli.create_model("edm", preset="cifar10", cond="uc-lora", label_dim=10)
    loracli.save(net, "run/ckpt.safetensors")
    net = loracli.load("run/ckpt.safetensors")
    images = loracli.sample(net, seeds=range(8), class_labels=3, steps=18)

Imports are lazy so that ``loracli --help`` starts fast.
"""

from __future__ import annotations

from typing import Any

from loracli._version import __version__

__all__ = ["create_model", "load", "save", "sample", "UserError", "__version__"]

_LAZY = {
    "create_model": ("loracli.build", "create_model"),
    "load": ("loracli.io.checkpoint", "load"),
    "save": ("loracli.io.checkpoint", "save"),
    "sample": ("loracli.generate", "sample"),
    "UserError": ("loracli.errors", "UserError"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'loracli' has no attribute {name!r}")
