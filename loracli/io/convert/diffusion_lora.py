"""lthilnklover/diffusion_lora pickles: EDM networks whose attention projections are ``LoraInjectedConv``.

Read with the restricted unpickler (``LoraInjectedConv`` is allowed only as an inert record; nothing from the
file runs) and mapped onto loracli's ``edm`` model with ``uc-lora``, the same computation (FORMATS.md §3.2-3.4):

    X.conv.weight / .conv.bias       -> X.base_layer.weight / .bias        (the original EDM projection)
    X.lora_down.weight [rm, C, 1, 1] -> X.adapters.uc_lora.down [rm, C]
    X.lora_up.weight [O, rm, 1, 1]   -> X.adapters.uc_lora.up [O, rm]
    X.bias [rm, O]  (the LoRA bias!) -> X.adapters.uc_lora.bias [rm, O]
    X.comp_weights.*                 -> X.adapters.uc_lora.omega.mlp.*

Both codes give basis i the rank channels ``i·r … i·r + r − 1``, so tensors copy one to one; a ``scale``
other than 1 is folded into ``up`` and ``bias``.
"""

from __future__ import annotations

import mmap
import pickle
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from loracli.errors import UserError
from loracli.io.convert.base import ForeignCheckpoint, file_sha256
from loracli.io.convert.edm_pickle import _select, _summary
from loracli.io.convert.unpickle import (PersistentRecord, Record, is_torch_zip, load_file, state_dict,
                                         torch_zip_pickle, walk)

FORMAT = "diffusion-lora-pickle"
LORA_CLASS = "training.lora.LoraInjectedConv"
_MARKERS = (b"training.lora", b"LoraInjectedConv")
VARIANT = "uc-lora"
_PREFIX = f"adapters.{VARIANT.replace('-', '_')}."


def _has_markers(data: Any) -> bool:
    return all(data.find(m) >= 0 for m in _MARKERS)


def detect(path: Path) -> bool:
    """A pickle (or torch archive) that references ``training.lora.LoraInjectedConv``."""
    try:
        if is_torch_zip(path):
            with zipfile.ZipFile(path) as archive:
                info = archive.getinfo(torch_zip_pickle(archive))
                if info.compress_type != zipfile.ZIP_STORED:  # never inflate a record just to look at it
                    return False
                with archive.open(info) as pkl:
                    return _has_markers(pkl.read(path.stat().st_size))
        with open(path, "rb") as f:
            if f.read(1) != b"\x80":
                return False
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _has_markers(data)
    except (OSError, ValueError, zipfile.BadZipFile, KeyError, pickle.UnpicklingError):
        return False


def _named(record: Record, prefix: str = "") -> Iterator[tuple[str, Record]]:
    for name, child in (record.state.get("_modules") or {}).items():
        if isinstance(child, Record):
            yield prefix + name, child
            yield from _named(child, f"{prefix}{name}.")


def _lora_options(name: str, module: Record, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The uc-lora options one ``LoraInjectedConv`` was built with (rank, bases, MLP widths)."""
    if module.state.get("bypass"):
        raise UserError(f"The LoRA layer '{name}' was saved bypassed (set_bypass_for_lora), so the snapshot's "
                        "network ignores it; re-save it with the bypass off to convert it.")
    if module.state.get("dim", 2) != 2:
        raise UserError(f"The LoRA layer '{name}' is not a 2-D convolution, which EDM networks never have.")
    widths, i = [], 0
    while f"{name}.comp_weights.{i}.0.weight" in tensors:
        widths.append(int(tensors[f"{name}.comp_weights.{i}.0.weight"].shape[0]))
        i += 1
    return {"lora_rank": int(module.state["lora_rank"]),
            "bases": int(tensors[f"{name}.comp_weights.{i}.weight"].shape[0]), "mlp": widths}


def _renamed(name: str, tensors: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """One ``LoraInjectedConv``'s tensors under loracli's names (see the module docstring)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if not key.startswith(name + "."):
            continue
        rest = key[len(name) + 1:]
        if rest.startswith("conv."):
            out[f"{name}.base_layer.{rest[5:]}"] = tensor
        elif rest == "lora_down.weight":
            out[f"{name}.{_PREFIX}down"] = tensor.flatten(1)
        elif rest == "lora_up.weight":
            out[f"{name}.{_PREFIX}up"] = tensor.flatten(1) * scale
        elif rest == "bias":
            out[f"{name}.{_PREFIX}bias"] = tensor * scale
        elif rest.startswith("comp_weights."):
            out[f"{name}.{_PREFIX}omega.mlp.{rest[len('comp_weights.'):]}"] = tensor
        else:
            raise UserError(f"The LoRA layer '{name}' holds an unexpected tensor '{rest}'.")
    return out


def read(path: Path, key: str | None = None) -> ForeignCheckpoint:
    """A diffusion_lora snapshot as loracli's ``edm`` model with ``uc-lora``; ``key`` picks the entry."""
    from loracli.models.edm.config import from_reference
    from loracli.models.edm.presets import match_preset

    path = Path(path)
    obj = load_file(path, inert_classes={LORA_CLASS})
    net, key = _select(obj, key, path)
    model = (net.state.get("_modules") or {}).get("model")
    if not isinstance(model, PersistentRecord):
        raise UserError(f"'{path}' holds a {net.class_name} without the U-Net ('model') an EDM network has.")
    config = from_reference(net.class_name, net.state.get("_init_args") or (),
                            net.state.get("_init_kwargs") or {}, model.class_name)

    tensors = state_dict(net)
    loras = {name: r for name, r in _named(net) if r.class_name == LORA_CLASS}
    if not loras:
        raise UserError(f"'{path}' has no LoRA layers; convert it as a plain NVlabs/edm pickle.")
    options = {name: _lora_options(name, r, tensors) for name, r in loras.items()}
    distinct = {str(o) for o in options.values()}
    if len(distinct) > 1:
        raise UserError(f"'{path}' mixes LoRA layers of different shapes ({'; '.join(sorted(distinct))}).")
    out = {k: v for k, v in tensors.items() if not any(k.startswith(n + ".") for n in loras)}
    for name, record in loras.items():
        out.update(_renamed(name, tensors, float(record.state.get("scale", 1.0))))

    source: dict[str, Any] = {
        "file": path.name, "format": FORMAT, "sha256": file_sha256(path), "key": key,
        "classes": [net.class_name, model.class_name, LORA_CLASS], "lora_layers": len(loras),
        "module_src_sha256": sorted({r.source_sha256 for r in walk(net) if isinstance(r, PersistentRecord)}),
    }
    if isinstance(obj, dict):
        source.update({k: _summary(obj[k]) for k in ("loss_fn", "augment_pipe", "dataset_kwargs") if k in obj})
    return ForeignCheckpoint(model="edm", model_config=config, state_dict={f"net.{k}": v for k, v in out.items()},
                             preset=match_preset(config), cond=[VARIANT],
                             cond_options={VARIANT: next(iter(options.values()))}, source=source,
                             ema=key == "ema")
