"""The network loracli builds: a base network plus the conditioning wrapped around its attention.

``ConditionedModel.forward`` puts the condition of the current call (noise level or timestep, class vectors,
augmentation labels) into a :class:`ConditionContext` that every adapter shares, runs the unmodified base
network, and clears the context. The embedding the base network computes for its scale-and-shift layers
reaches the context through the network's declared *embedding tap*, so nothing is computed twice and the base
network's code knows nothing of LoRA.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import torch
from torch import nn

from loracli.errors import UserError


class ConditionContext:
    """The condition of the forward pass in progress, shared by reference with every adapter."""

    __slots__ = ("noise_level", "class_labels", "augment_labels", "embedding")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.noise_level: torch.Tensor | None = None
        self.class_labels: torch.Tensor | None = None
        self.augment_labels: torch.Tensor | None = None
        self.embedding: torch.Tensor | None = None

    def require(self, field: str) -> torch.Tensor:
        """The named condition of the current call; a clear error when an adapter runs outside one."""
        value = getattr(self, field)
        if value is None:
            if field == "embedding":
                raise RuntimeError("the base network did not pass its embedding through its declared tap")
            raise RuntimeError(
                f"a conditioned layer needs the {field.replace('_', ' ')} of the call; call the ConditionedModel "
                "(not its .net directly), and give class labels to a class-conditional model"
            )
        return value


class EmbeddingTap(nn.Module):
    """Replaces the base network's ``nn.Identity`` tap: records the embedding, returns it unchanged."""

    def __init__(self, context: ConditionContext) -> None:
        super().__init__()
        self.context = context

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        self.context.embedding = emb
        return emb


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


class ConditionedModel(nn.Module):
    """A base diffusion network (``self.net``) with its conditioning variants applied.

    Call it like the reference networks: ``model(x, sigma, class_labels, augment_labels)`` for the ``edm``
    family, ``model(x, t, class_labels)`` for the ``ddpm`` family. ``class_labels`` may be integer classes
    ``[N]`` or class vectors ``[N, label_dim]`` (soft vectors interpolate between classes).
    """

    def __init__(self, net: nn.Module, spec: Any, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.net = net
        self.spec = spec
        self.config = dict(config)
        self.context = ConditionContext()
        self._condition_modules: list[nn.Module] = []
        self._tap_installed = False

    # -- what conditioning variants use -------------------------------------------------------------------
    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def label_dim(self) -> int:
        return int(self.config["model_config"].get("label_dim", 0) or 0)

    def attention_sites(self) -> list:
        """The attention blocks of the base network (see ``ModelSpec.attention_sites``)."""
        return list(self.spec.attention_sites(self.net))

    def use_embedding(self) -> None:
        """Route the base network's conditioning embedding into ``self.context.embedding``."""
        if self._tap_installed:
            return
        tap = self.spec.tap_name(self.config["model_config"])
        if tap is None:
            raise UserError(f"Model '{self.spec.name}' in this configuration has no conditioning embedding to read.")
        _set_submodule(self.net, tap, EmbeddingTap(self.context))
        self._tap_installed = True

    def embedding_channels(self) -> int:
        """The width of the base network's conditioning embedding (``ModelSpec.embedding_channels``)."""
        if self.spec.embedding_channels is None:
            raise UserError(f"Model '{self.spec.name}' does not declare the width of its conditioning embedding.")
        return int(self.spec.embedding_channels(self.net))

    def replace_submodule(self, name: str, module: nn.Module) -> None:
        """Swap the base network's submodule ``name`` for ``module`` (used to wrap projections)."""
        _set_submodule(self.net, name, module)

    def register_condition_module(self, module: nn.Module) -> None:
        """Mark a module a variant added, so its parameters count as conditioning (``--finetune`` trains them)."""
        self._condition_modules.append(module)

    def train_adapters_only(self, mode: bool = True) -> "ConditionedModel":
        """Training mode for the adapters alone; the base network evaluates as frozen (dropout and label dropout
        off), as the official code fine-tunes a frozen base (``--finetune``)."""
        self.train(False)
        for module in self._condition_modules:
            module.train(mode)
        return self

    def condition_parameters(self) -> Iterator[nn.Parameter]:
        seen: set[int] = set()
        for module in self._condition_modules:
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def base_parameters(self) -> Iterator[nn.Parameter]:
        cond = {id(p) for p in self.condition_parameters()}
        return (p for p in self.parameters() if id(p) not in cond)

    # -- the forward pass ---------------------------------------------------------------------------------
    def class_vectors(self, class_labels: Any, batch: int, device: torch.device) -> torch.Tensor | None:
        """Class labels as float vectors ``[N, label_dim]``: integers become one-hot, vectors pass through."""
        if self.label_dim == 0:
            if class_labels is not None:
                raise UserError("This model is unconditional; it takes no class label.")
            return None
        if class_labels is None:
            return torch.zeros(batch, self.label_dim, device=device)
        labels = torch.as_tensor(class_labels, device=device)
        if labels.ndim == 2 and labels.is_floating_point():
            return labels.to(torch.float32)
        labels = labels.reshape(-1).long()
        if labels.numel() == 1 and batch != 1:
            labels = labels.expand(batch)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.label_dim):
            raise UserError(f"Class labels must lie in 0..{self.label_dim - 1}.")
        return nn.functional.one_hot(labels, self.label_dim).to(torch.float32)

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, class_labels: Any = None,
                augment_labels: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        noise_level = torch.as_tensor(noise_level, device=x.device)
        if noise_level.ndim == 0:
            noise_level = noise_level.expand(x.shape[0])
        labels = self.class_vectors(class_labels, x.shape[0], x.device)
        ctx = self.context
        ctx.noise_level, ctx.class_labels, ctx.augment_labels = noise_level, labels, augment_labels
        try:
            if self.family == "edm":
                return self.net(x, noise_level, labels, augment_labels=augment_labels, **kwargs)
            return self.net(x, noise_level, labels, **kwargs)
        finally:
            ctx.clear()

    def extra_repr(self) -> str:
        return f"model={self.config.get('model')!r}, cond={'+'.join(self.config.get('cond', [])) or 'none'!r}"
