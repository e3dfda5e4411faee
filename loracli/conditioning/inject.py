"""Finding the attention projections a model declares and wrapping them with LoRA branches.

Drop-in: only ``model.attention_sites()`` is consulted (the qkv and output projection of every self-attention
block, PAPER §2.1); the base network's code is not edited, its projections are swapped for
:class:`LoRAProjection` wrappers that keep them as ``base_layer``.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from loracli.conditioning.lora import LoRABranch, LoRAProjection, projection_features


def projection_names(model: Any) -> list[str]:
    """Qualified names (under ``model.net``) of every projection LoRA adapts, qkv then proj per block."""
    return [name for site in model.attention_sites() for name in site.projections()]


def lora_projection(model: Any, name: str) -> LoRAProjection:
    """The LoRA wrapper of projection ``name``: an existing one (also under other wrappers) or a new one."""
    module = model.net.get_submodule(name)
    layer: nn.Module | None = module
    while layer is not None:
        if isinstance(layer, LoRAProjection):
            return layer
        layer = layer._modules.get("base_layer")
    wrapper = LoRAProjection(module, model.context)
    model.replace_submodule(name, wrapper)
    return wrapper


def add_lora(model: Any, variant: str, make_branch: Callable[[int, int], LoRABranch]) -> None:
    """Give every declared projection a ``variant`` branch built by ``make_branch(d_in, d_out)``.

    The branches are registered as condition modules, so ``model.condition_parameters()`` holds exactly the
    adapters and their ω sources, and ``model.base_parameters()`` the untouched base network.
    """
    for name in projection_names(model):
        wrapper = lora_projection(model, name)
        branch = make_branch(*projection_features(wrapper))
        wrapper.add_branch(variant, branch)
        model.register_condition_module(branch)


def lora_projections(module: nn.Module) -> dict[str, LoRAProjection]:
    """Every LoRA-wrapped projection under ``module``, by qualified name."""
    return {name: m for name, m in module.named_modules() if isinstance(m, LoRAProjection)}
