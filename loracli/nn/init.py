"""Initialisation that does not depend on which layers exist: every module seeded by its own name.

A network built from one seed draws its random weights from torch's global generator in construction order,
so adding or removing one layer (LoRA adapters, the scale-and-shift layers) shifts every later draw, and two
arms of a study built with one seed would share no weights. :func:`reseed_by_name` redraws each module's own
tensors from a generator seeded by ``(seed, qualified name)`` instead: two networks built with one seed then
share every tensor they have in common, bit for bit, whatever else they contain.

The convention (torch's own): a module that owns random tensors re-draws them, from the global generator and
with its reference distribution, in ``reset_parameters()``, touching only its own tensors (not its
children's). A layer the network zero-initialises after building it (IDDPM's ``zero_module``, adaLN-Zero)
is marked with :func:`zero_init` so that it stays zero when re-drawn.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterable

import torch
from torch import nn


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters and keep them zero when the network is re-seeded (the reference's ``zero_module``)."""
    module.zero_init = True
    _zero_own(module)
    return module


def _zero_own(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


def module_seed(seed: int, name: str) -> int:
    """A 63-bit seed for the module ``name`` of a network built with ``seed`` (the same on every machine)."""
    digest = hashlib.blake2b(f"{int(seed)}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _owns_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def unseeded_modules(root: nn.Module) -> list[str]:
    """The modules that own parameters but cannot re-draw them (no ``reset_parameters``): their weights would
    still depend on construction order. Every built-in network and variant must have none."""
    return [name for name, m in root.named_modules() if _owns_parameters(m) and not hasattr(m, "reset_parameters")]


def reseed_by_name(root: nn.Module, seed: int, name_of: Callable[[str], str] = lambda n: n,
                   names: Iterable[str] | None = None) -> None:
    """Re-draw every module's own tensors from a generator seeded by ``(seed, name_of(qualified name))``.

    ``name_of`` maps a module's place in ``root`` to the name it is seeded by (e.g. without the wrappers that
    adapters add, so a wrapped projection keeps its weights); ``names`` limits the re-draw to these modules
    and their descendants. torch's global generator is left as it was; every tensor is drawn on the CPU by
    one serial generator, so the result does not depend on the thread count.
    """
    prefixes = None if names is None else tuple(names)
    modules = [(n, m) for n, m in root.named_modules()
               if prefixes is None or any(n == p or n.startswith(p + ".") for p in prefixes)]
    for name, module in reversed(modules):  # descendants before their ancestors
        reset = getattr(module, "reset_parameters", None)
        if reset is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(module_seed(seed, name_of(name)))
                reset()
        if getattr(module, "zero_init", False):  # after its descendants: a zeroed container stays zero
            _zero_own(module)
