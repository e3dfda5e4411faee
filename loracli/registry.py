"""Plugin discovery: base models and conditioning variants registered through entry points.

Two entry-point groups, ``loracli.models`` (each entry a :class:`ModelSpec`) and ``loracli.conditions`` (each a
:class:`ConditionSpec`). The built-ins register through the same groups as a third-party package, so this
module is the only place that knows where models and conditions come from.
"""

from __future__ import annotations

import importlib.metadata as metadata
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from loracli.errors import UserError

MODEL_GROUP = "loracli.models"
CONDITION_GROUP = "loracli.conditions"
FAMILIES = ("edm", "ddpm")


@dataclass(frozen=True)
class AttentionSite:
    """One self-attention block of a base network, by the qualified names of its parts.

    ``qkv`` and ``proj`` are the projections LoRA adapts; ``norm`` is the normalisation before ``qkv``
    (what adaLN-style conditioning modulates). ``qkv`` is one name for a fused query-key-value projection
    (``channels -> 3 * channels``) or a tuple of three names for separate ones (``channels -> channels`` each,
    e.g. diffusers' ``to_q``, ``to_k``, ``to_v``); each adapted projection gets its own LoRA branch.
    """

    block: str
    norm: str
    qkv: str | tuple[str, str, str]
    proj: str
    channels: int
    heads: int

    @property
    def qkv_names(self) -> tuple[str, ...]:
        """The query-key-value projection(s): one fused name, or the three separate ones."""
        return (self.qkv,) if isinstance(self.qkv, str) else tuple(self.qkv)

    def projections(self) -> tuple[str, ...]:
        """Every projection of the block LoRA adapts, query-key-value first, then the output projection."""
        return (*self.qkv_names, self.proj)


@dataclass(frozen=True)
class Preset:
    """A named configuration of a base model and the defaults that go with it.

    ``config`` holds builder keyword arguments, ``conditions`` per-variant option defaults (e.g. the paper's
    18 bases for EDM CIFAR-10), ``sampling`` the sampler defaults (e.g. 18 Heun steps), ``reference`` where
    the numbers come from, ``recipe`` the path of the preset's training recipe TOML when it is not
    ``loracli/configs/<model>-<preset>.toml`` (a plugin ships its own).
    """

    config: Mapping[str, Any]
    description: str = ""
    conditions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sampling: Mapping[str, Any] = field(default_factory=dict)
    reference: str = ""
    recipe: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """What a base model declares to loracli.

    family: ``edm`` (``net(x, sigma, class_labels, augment_labels) -> D(x; sigma)``) or ``ddpm``
    (``net(x, t, class_labels) -> model output`` over integer timesteps).
    build: ``build(**config) -> nn.Module``; must accept ``label_dim`` and ``scale_shift`` (False removes all
    scale-and-shift conditioning, the paper's "only LoRA" base).
    attention_sites: ``attention_sites(net) -> list[AttentionSite]``: the blocks conditioning may wrap.
    embedding_tap: qualified name of an ``nn.Identity`` the network passes its conditioning embedding
    through (the vector that feeds scale-and-shift), or ``None`` when the network has none.
    embedding_channels: ``embedding_channels(net) -> int``, the width of that embedding read from the built
    network (what conditioning that consumes it, e.g. UC-LoRA's omega-MLPs, needs to size its first layer).
    """

    name: str
    family: str
    build: Callable[..., Any]
    presets: Mapping[str, Preset]
    default_preset: str
    attention_sites: Callable[[Any], list]
    embedding_tap: Callable[[Mapping[str, Any]], str | None] | str | None = None
    embedding_channels: Callable[[Any], int] | None = None
    description: str = ""

    def tap_name(self, config: Mapping[str, Any]) -> str | None:
        """The embedding tap for a built configuration (callable taps may depend on it)."""
        return self.embedding_tap(config) if callable(self.embedding_tap) else self.embedding_tap


@dataclass(frozen=True)
class ConditionSpec:
    """What a conditioning variant declares to loracli.

    apply: ``apply(model, options)`` wraps the declared parts of ``model.net`` in place (``model`` is a
    :class:`loracli.conditioning.wrapper.ConditionedModel`) and returns nothing.
    defaults: option defaults; a model preset may override them (``Preset.conditions[name]``).
    families: the model families the variant supports.
    needs: ``"timesteps"``, ``"labels"`` or ``"embedding"``: what the variant reads from the condition, so
    that an impossible combination is refused before anything is built.
    """

    name: str
    apply: Callable[[Any, Mapping[str, Any]], None]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    families: tuple[str, ...] = FAMILIES
    needs: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class Registered:
    """A discovered plugin: the spec and the distribution that provides it."""

    spec: Any
    distribution: str
    version: str
    entry_point: str


_cache: dict[str, dict[str, Registered]] = {}


def _distribution_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?", "?"
    return dist.metadata["Name"], dist.version


def _discover(group: str, kind: type) -> dict[str, Registered]:
    found: dict[str, Registered] = {}
    for ep in metadata.entry_points(group=group):
        dist, version = _distribution_of(ep)
        if ep.name in found:
            # The same distribution seen twice on sys.path (an editable install beside a wheel) is one plugin.
            if found[ep.name].entry_point == ep.value and found[ep.name].distribution == dist:
                continue
            raise UserError(
                f"Two plugins register {group} '{ep.name}': {found[ep.name].distribution} "
                f"({found[ep.name].entry_point}) and {dist} ({ep.value}); uninstall one of them."
            )
        try:
            spec = ep.load()
        except Exception as exc:  # a broken plugin must never stop the CLI
            warnings.warn(f"loracli plugin '{ep.name}' from {dist} failed to import and is skipped: {exc}")
            continue
        if not isinstance(spec, kind):
            warnings.warn(f"loracli plugin '{ep.name}' from {dist} is not a {kind.__name__} and is skipped.")
            continue
        if spec.name != ep.name:
            warnings.warn(f"loracli plugin '{ep.name}' from {dist} names itself '{spec.name}'; using '{ep.name}'.")
        found[ep.name] = Registered(spec, dist, version, ep.value)
    return found


def _group(group: str, kind: type) -> dict[str, Registered]:
    if group not in _cache:
        _cache[group] = _discover(group, kind)
    return _cache[group]


def clear_cache() -> None:
    """Forget discovered plugins (tests that install a plugin at run time call this)."""
    _cache.clear()


def models() -> dict[str, Registered]:
    """Every registered base model, by name."""
    return _group(MODEL_GROUP, ModelSpec)


def conditions() -> dict[str, Registered]:
    """Every registered conditioning variant, by name."""
    return _group(CONDITION_GROUP, ConditionSpec)


def get_model(name: str) -> ModelSpec:
    """The spec of a base model, or a UserError listing the known ones."""
    found = models()
    if name not in found:
        raise UserError(f"Unknown model '{name}'; known models: {', '.join(sorted(found)) or 'none'}.")
    return found[name].spec


def get_condition(name: str) -> ConditionSpec:
    """The spec of a conditioning variant, or a UserError listing the known ones."""
    found = conditions()
    if name not in found:
        raise UserError(
            f"Unknown conditioning '{name}'; known conditionings: {', '.join(sorted(found)) or 'none'}."
        )
    return found[name].spec
