"""Building networks: presets, overrides and conditioning variants resolved into one config, then built.

The resolved config is plain JSON-able data. It is stored in every checkpoint, and ``build_model(config)``
rebuilds the same network from it, so a checkpoint needs nothing but itself.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

from loracli import registry
from loracli.conditioning.wrapper import ConditionedModel
from loracli.errors import UserError
from loracli.nn import reseed_by_name

CONFIG_FORMAT = 1


def parse_cond(cond: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """``"time-lora+class-lora"`` -> ``["time-lora", "class-lora"]``; ``"none"`` -> ``[]``."""
    if cond is None:
        return []
    names = list(cond) if isinstance(cond, (list, tuple)) else [c.strip() for c in str(cond).split("+")]
    if names == [""]:
        return []
    if not all(names):
        raise UserError(f"Conditioning '{cond if isinstance(cond, str) else '+'.join(names)}' has an empty part; "
                        "join variant names with single + signs, e.g. time-lora+class-lora.")
    if names == ["none"] or not names:
        return []
    if "none" in names:
        raise UserError("'none' cannot be combined with other conditionings.")
    if len(set(names)) != len(names):
        raise UserError(f"Conditioning '{'+'.join(names)}' names a variant twice.")
    return names


def resolve_config(name: str, preset: str | None = None, cond: Any = "none", only_lora: bool = False,
                   label_dim: int | None = None, **overrides: Any) -> dict[str, Any]:
    """The full build config for a model: preset, then overrides; condition options split off by name."""
    spec = registry.get_model(name)
    preset = preset or spec.default_preset
    if preset not in spec.presets:
        raise UserError(f"Model '{name}' has no preset '{preset}'; presets: {', '.join(spec.presets)}.")
    p = spec.presets[preset]
    names = parse_cond(cond)
    cond_specs = {n: registry.get_condition(n) for n in names}

    cond_options: dict[str, dict[str, Any]] = {}
    used: set[str] = set()
    for n, cs in cond_specs.items():
        options = {**copy.deepcopy(dict(cs.defaults)), **copy.deepcopy(dict(p.conditions.get(n, {})))}
        for key in list(options):
            if key in overrides and overrides[key] is not None:
                options[key] = overrides[key]
                used.add(key)
        cond_options[n] = options
    model_config = copy.deepcopy(dict(p.config))
    for key, value in overrides.items():
        if key not in used and value is not None:
            model_config[key] = value
    if label_dim is not None:
        model_config["label_dim"] = int(label_dim)
    model_config.setdefault("label_dim", 0)
    model_config["scale_shift"] = not only_lora

    config = {
        "format": CONFIG_FORMAT,
        "model": name,
        "family": spec.family,
        "preset": preset,
        "model_config": model_config,
        "cond": names,
        "cond_options": cond_options,
        "only_lora": bool(only_lora),
        "sampling": copy.deepcopy(dict(p.sampling)),
    }
    check_config(config)
    return config


def check_config(config: Mapping[str, Any]) -> None:
    """Refuse conditioning a model cannot take, with the reason, before anything is built."""
    spec = registry.get_model(config["model"])
    model_config = config["model_config"]
    preset = config.get("preset")
    if preset is not None and preset not in spec.presets:
        raise UserError(f"Model '{spec.name}' has no preset '{preset}'; presets: {', '.join(spec.presets)}.")
    for n in config["cond"]:
        cs = registry.get_condition(n)
        if spec.family not in cs.families:
            raise UserError(
                f"Conditioning '{n}' works on {'/'.join(cs.families)}-family models; "
                f"'{spec.name}' is {spec.family}-family."
            )
        if "labels" in cs.needs and not model_config.get("label_dim"):
            raise UserError(f"Conditioning '{n}' needs a class-conditional model; pass --label-dim (e.g. 10).")
        if "embedding" in cs.needs and spec.tap_name(model_config) is None:
            raise UserError(
                f"Conditioning '{n}' reads the network's conditioning embedding, which '{spec.name}' does not "
                f"have{' without scale-and-shift (--only-lora)' if config.get('only_lora') else ''}."
            )


def seeding_name(name: str) -> str:
    """The name a module is seeded by: its place in the network without the wrappers adapters add, so that a
    projection keeps its weights whether or not it is wrapped (``...qkv.base_layer`` -> ``...qkv``)."""
    return ".".join(part for part in name.split(".") if part != "base_layer")


def build_model(config: Mapping[str, Any], seed: int | None = None) -> ConditionedModel:
    """Build the network a resolved config describes (fresh initialisation).

    With ``seed``, every module's weights are drawn from a generator seeded by the seed and the module's name
    (:func:`loracli.nn.reseed_by_name`), so networks of one seed that differ in some layers (conditioning
    variants, ``only_lora``) share every other tensor exactly. Without it, torch's global generator decides
    (as for a network about to be overwritten by a checkpoint).
    """
    if config.get("format") != CONFIG_FORMAT:
        raise UserError(f"Unsupported loracli config format {config.get('format')!r}; upgrade loracli.")
    check_config(config)
    spec = registry.get_model(config["model"])
    try:
        net = spec.build(**config["model_config"])
    except TypeError as exc:
        raise UserError(f"Model '{spec.name}' does not accept these settings: {exc}.") from exc
    model = ConditionedModel(net, spec, config)
    for n in config["cond"]:
        registry.get_condition(n).apply(model, config["cond_options"][n])
    if seed is not None:
        reseed_by_name(model, seed, seeding_name)
    return model


def add_conditions(model: ConditionedModel, cond: Any, seed: int | None = None, **overrides: Any) -> ConditionedModel:
    """Wrap an already built (e.g. pretrained, just loaded) network with further conditioning variants.

    This is the paper's drop-in recipe: the adapters start at zero, so the network still computes what it
    computed before. ``model.config`` is updated so that a checkpoint of the result rebuilds it. With
    ``seed``, the new adapters are drawn by name, as :func:`build_model` draws a whole network.
    """
    names = parse_cond(cond)
    clash = [n for n in names if n in model.config["cond"]]
    if clash:
        raise UserError(f"The network already has conditioning '{'+'.join(clash)}'.")
    spec = registry.get_model(model.config["model"])
    preset = spec.presets.get(model.config.get("preset") or "")
    config = copy.deepcopy(model.config)
    for n in names:
        cs = registry.get_condition(n)
        options = {**copy.deepcopy(dict(cs.defaults)),
                   **(copy.deepcopy(dict(preset.conditions.get(n, {}))) if preset else {})}
        options.update({k: v for k, v in overrides.items() if k in options and v is not None})
        config["cond"].append(n)
        config["cond_options"][n] = options
    check_config(config)
    existing = {id(m) for m in model._condition_modules}
    for n in names:
        registry.get_condition(n).apply(model, config["cond_options"][n])
    model.config = config
    if seed is not None:
        added = {id(m) for m in model._condition_modules} - existing
        reseed_by_name(model, seed, seeding_name, [n for n, m in model.named_modules() if id(m) in added])
    return model


def create_model(name: str, preset: str | None = None, cond: Any = "none", only_lora: bool = False,
                 label_dim: int | None = None, **overrides: Any) -> ConditionedModel:
    """Build a registered model, e.g. ``create_model("edm", preset="cifar10", cond="uc-lora", label_dim=10)``.

    ``cond`` may combine variants with ``+``; ``only_lora`` removes the base network's scale-and-shift
    conditioning; ``label_dim`` defaults to the preset's (0, unconditional, for most). Other keyword
    arguments override the preset's builder settings, or a variant's options (``lora_rank``, ``bases``, ...).
    """
    return build_model(resolve_config(name, preset, cond, only_lora, label_dim, **overrides))
