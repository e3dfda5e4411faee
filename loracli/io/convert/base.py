"""The conversion flow shared by every foreign format."""

from __future__ import annotations

import hashlib
import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loracli.errors import UserError

# Format modules, tried in order; each has detect(path) and read(path, **options). Plugins add formats through
# the ``loracli.converters`` entry points (each a module with the same two functions and, optionally,
# ``hint(path) -> str | None``: the sentence for a path that does not exist, e.g. a Hub id); only they may read
# folders.
CONVERTER_GROUP = "loracli.converters"
FORMATS = {
    "loracli": "loracli.io.convert.native",
    "diffusion-lora-pickle": "loracli.io.convert.diffusion_lora",  # before edm-pickle: also an EDM pickle
    "edm-pickle": "loracli.io.convert.edm_pickle",
    "iddpm-pt": "loracli.io.convert.iddpm_pt",
}


@dataclass
class ForeignCheckpoint:
    """What a foreign file describes, in loracli's terms.

    ``model_config`` is complete builder kwargs for ``model`` (including ``label_dim`` and ``scale_shift``);
    ``state_dict`` uses the key names of the loracli network built from this description (with ``cond``
    applied); ``preset`` names the model preset with the same network, if any (its sampling and conditioning
    defaults then apply); ``source`` records provenance (file name, format, hashes) for the checkpoint metadata;
    ``ema`` says whether the weights are an exponential moving average (what a checkpoint for sampling holds).
    """

    model: str
    model_config: dict[str, Any]
    state_dict: dict[str, Any]
    preset: str | None = None
    cond: list[str] = field(default_factory=list)
    cond_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    only_lora: bool = False
    source: dict[str, Any] = field(default_factory=dict)
    ema: bool = True


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file, read in chunks (provenance of a converted checkpoint)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def plugin_formats() -> dict[str, str]:
    """Formats plugins register (``loracli.converters`` entry points): name -> module."""
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=CONVERTER_GROUP) if ep.name not in FORMATS}


def _format_module(name: str) -> Any:
    return importlib.import_module({**FORMATS, **plugin_formats()}[name])


def exporter(name: str, package: str) -> Any:
    """The ``export(model, out)`` function of the plugin format ``name``, or a UserError naming ``package``."""
    if name not in plugin_formats():
        raise UserError(f"Exporting to {name} needs the {package} plugin; install it (from loracli's repository: "
                        f"pip install -e plugins/{package}).")
    module = _format_module(name)
    if not hasattr(module, "export"):
        raise UserError(f"The {name} format of {package} cannot export.")
    return module.export


def _plugin_modules() -> list[Any]:
    modules = []
    for name in plugin_formats():
        try:
            modules.append(_format_module(name))
        except ImportError:
            continue
    return modules


def detect_format(path: Path) -> str:
    if not path.exists():
        hints = [m.hint(path) for m in _plugin_modules() if hasattr(m, "hint")]
        raise UserError(next((h for h in hints if h), f"No file at '{path}'."))
    names = list(plugin_formats()) if path.is_dir() else [*FORMATS, *plugin_formats()]
    for name in names:
        try:
            module = _format_module(name)
        except ImportError:
            continue
        if module.detect(path):
            return name
    if path.is_dir():
        raise UserError(f"'{path}' is a folder loracli cannot convert; pass a checkpoint file (or a diffusers "
                        "model or pipeline folder, with loracli-diffusers installed).")
    raise UserError(
        f"'{path}' is not a checkpoint loracli can convert (expected an NVlabs/edm or diffusion_lora "
        "network-snapshot .pkl, an improved-diffusion .pt state dict, or a loracli .safetensors)."
    )


def _check_options(fmt: str, reader: Any, options: dict[str, Any]) -> None:
    """Refuse options the format's reader does not take (e.g. ``--num-heads`` for an EDM pickle)."""
    params = inspect.signature(reader).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(k for k in options if k not in params)
    if unknown:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in unknown)
        raise UserError(f"{flags} does not apply to {fmt} files; leave it out.")


def read_any(path: str | Path, **options: Any) -> ForeignCheckpoint:
    """Read any supported foreign checkpoint; options left as None are dropped, others must suit its format."""
    path = Path(path)
    fmt = detect_format(path)
    reader = _format_module(fmt).read
    options = {k: v for k, v in options.items() if v is not None}
    _check_options(fmt, reader, options)
    try:
        return reader(path, **options)
    except Exception as exc:  # noqa: BLE001 -- whatever a hostile file makes a reader raise is one sentence
        from loracli.io.convert.unpickle import refusal

        raise refusal(path, exc) from None


def convert_model(src: str | Path, cond: Any = None, allow_nonfinite: bool = False, **options: Any) -> Any:
    """The loracli network (a ConditionedModel) holding the weights of ``src``; ``cond`` adds conditioning.

    ``options`` go to the format reader (e.g. ``key`` for EDM pickles, ``num_heads`` for improved-diffusion)
    or, for the added conditioning, to its variants (``lora_rank``, ``bases``, ...). The network the file
    describes is checked against its tensors on the meta device before it is built; NaN or infinite weights
    are refused unless ``allow_nonfinite``.
    """
    from loracli import registry
    from loracli.build import CONFIG_FORMAT, add_conditions, build_model, parse_cond
    from loracli.io.checkpoint import build_skeleton, check_finite, check_fits, load_state

    options = {k: v for k, v in options.items() if v is not None}
    cond_keys = {k for n in parse_cond(cond) for k in registry.get_condition(n).defaults}
    other_cond_keys = {k for reg in registry.conditions().values() for k in reg.spec.defaults} - cond_keys
    misplaced = sorted(k for k in options if k in other_cond_keys)
    if misplaced:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in misplaced)
        raise UserError(f"{flags} does not apply to conditioning '{cond or 'none'}'; leave it out.")
    reader_options = {k: v for k, v in options.items() if k not in cond_keys}
    cond_options = {k: v for k, v in options.items() if k in cond_keys}
    foreign = read_any(src, **reader_options)
    spec = registry.get_model(foreign.model)
    config = {
        "format": CONFIG_FORMAT,
        "model": foreign.model,
        "family": spec.family,
        "preset": foreign.preset,
        "model_config": foreign.model_config,
        "cond": list(foreign.cond),
        "cond_options": foreign.cond_options,
        "only_lora": foreign.only_lora,
        "sampling": dict(spec.presets[foreign.preset].sampling) if foreign.preset in spec.presets else {},
    }
    try:
        table = {k: (tuple(v.shape), v.dtype) for k, v in foreign.state_dict.items()}
    except AttributeError:
        raise UserError(f"'{src}' holds something other than tensors where its weights should be.") from None
    check_fits(build_skeleton(config, str(src)), table, str(src), exact_dtype=False)
    if not allow_nonfinite:
        for name, tensor in foreign.state_dict.items():
            check_finite(name, tensor, str(src))
    needs_labels = [n for n in parse_cond(cond) if "labels" in registry.get_condition(n).needs]
    if needs_labels and not foreign.model_config.get("label_dim"):
        raise UserError(f"Conditioning '{needs_labels[0]}' needs class labels, but '{src}' is an unconditional "
                        "network; convert a class-conditional checkpoint, or use a variant that needs no labels "
                        "(e.g. uc-lora).")
    model = build_model(config)
    load_state(model, foreign.state_dict, str(src))
    if cond:
        add_conditions(model, cond, **cond_options)
    model.converted_from = {**foreign.source, "ema": foreign.ema}
    return model.eval()


def save_converted(model: Any, dst: str | Path) -> Path:
    """Write a network from :func:`convert_model` to ``dst``, with where it came from in the metadata."""
    from loracli.io.checkpoint import save

    return save(model, dst, ema=model.converted_from["ema"], extra={"converted_from": model.converted_from})


def convert(src: str | Path, dst: str | Path, cond: Any = None, **options: Any) -> Path:
    """Convert ``src`` into the loracli checkpoint ``dst`` (see :func:`convert_model`); returns ``dst``."""
    return save_converted(convert_model(src, cond, **options), dst)
