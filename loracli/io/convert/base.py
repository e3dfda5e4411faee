"""The conversion flow shared by every foreign format."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loracli.errors import UserError

# Format modules, tried in order; each has detect(path) and read(path, **options).
FORMATS = {
    "loracli": "loracli.io.convert.native",
    "edm-pickle": "loracli.io.convert.edm_pickle",
    "iddpm-pt": "loracli.io.convert.iddpm_pt",
}


@dataclass
class ForeignCheckpoint:
    """What a foreign file describes, in loracli's terms.

    ``model_config`` is complete builder kwargs for ``model`` (including ``label_dim`` and ``scale_shift``);
    ``state_dict`` uses the key names of the loracli network built from this description (with ``cond``
    applied); ``source`` records provenance (file name, format, hashes) for the checkpoint metadata.
    """

    model: str
    model_config: dict[str, Any]
    state_dict: dict[str, Any]
    preset: str | None = None
    cond: list[str] = field(default_factory=list)
    cond_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    only_lora: bool = False
    source: dict[str, Any] = field(default_factory=dict)


def _format_module(name: str) -> Any:
    return importlib.import_module(FORMATS[name])


def detect_format(path: Path) -> str:
    if not path.exists():
        raise UserError(f"No file at '{path}'.")
    if path.is_dir():
        raise UserError(f"'{path}' is a folder; pass a checkpoint file.")
    for name in FORMATS:
        try:
            module = _format_module(name)
        except ImportError:
            continue
        if module.detect(path):
            return name
    raise UserError(
        f"'{path}' is not a checkpoint loracli can convert (expected an NVlabs/edm or diffusion_lora "
        "network-snapshot .pkl, an improved-diffusion .pt state dict, or a loracli .safetensors)."
    )


def read_any(path: str | Path, **options: Any) -> ForeignCheckpoint:
    """Read any supported foreign checkpoint; options not meant for its format are ignored if None."""
    path = Path(path)
    fmt = detect_format(path)
    return _format_module(fmt).read(path, **{k: v for k, v in options.items() if v is not None})


def convert(src: str | Path, dst: str | Path, cond: Any = None, **options: Any) -> Path:
    """Convert ``src`` into the loracli checkpoint ``dst``; ``cond`` adds conditioning (drop-in LoRA).

    ``options`` go to the format reader (e.g. ``key`` for EDM pickles, ``num_heads`` for improved-diffusion)
    or, for the added conditioning, to its variants (``lora_rank``, ``bases``, ...).
    """
    from loracli.build import add_conditions, build_model, parse_cond
    from loracli.io.checkpoint import load_state, save
    from loracli import registry

    cond_keys = {k for n in parse_cond(cond) for k in registry.get_condition(n).defaults}
    reader_options = {k: v for k, v in options.items() if k not in cond_keys}
    cond_options = {k: v for k, v in options.items() if k in cond_keys}
    foreign = read_any(src, **reader_options)
    spec = registry.get_model(foreign.model)
    config = {
        "format": 1,
        "model": foreign.model,
        "family": spec.family,
        "preset": foreign.preset,
        "model_config": foreign.model_config,
        "cond": list(foreign.cond),
        "cond_options": foreign.cond_options,
        "only_lora": foreign.only_lora,
        "sampling": dict(spec.presets[foreign.preset].sampling) if foreign.preset in spec.presets else {},
    }
    model = build_model(config)
    load_state(model, foreign.state_dict, str(src))
    if cond:
        add_conditions(model, cond, **cond_options)
    return save(model, dst, ema=True, extra={"converted_from": foreign.source})
