"""loracli checkpoints: safetensors with the build config as JSON metadata.

A checkpoint alone rebuilds its network: ``load`` reads the metadata, builds the network from the config
(no code from the file runs: safetensors holds only tensors and strings) and loads the tensors strictly.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from loracli.errors import UserError
from loracli.io.atomic import atomic_path

FORMAT = "loracli-checkpoint"


def _check_file(path: Path) -> None:
    if not path.exists():
        raise UserError(f"No checkpoint at '{path}'.")
    if path.is_dir():
        raise UserError(f"'{path}' is a folder; pass the checkpoint file inside it (*.safetensors).")


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The safetensors header of ``path`` (tensor table and ``__metadata__``), checked for truncation."""
    path = Path(path)
    _check_file(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise UserError(f"'{path}' is not a safetensors file (it is {size} bytes long).")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100_000_000):
            raise UserError(f"'{path}' is not a safetensors checkpoint (its header is unreadable).")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(f"'{path}' is not a safetensors checkpoint (its header is unreadable).") from None
    if not isinstance(header, dict):
        raise UserError(f"'{path}' is not a safetensors checkpoint (its header is unreadable).")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise UserError(f"'{path}' is truncated ({size} of {8 + n + end} bytes); it was not written completely.")
    return header


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The loracli metadata of a checkpoint: ``config``, ``step``, ``ema``, ``extra`` (parsed JSON)."""
    meta = read_header(path).get("__metadata__") or {}
    if meta.get("format") != FORMAT or "config" not in meta:
        raise UserError(
            f"'{path}' is a safetensors file but not a loracli checkpoint; "
            "convert foreign checkpoints with `loracli convert SRC DST`."
        )
    try:
        return {
            "config": json.loads(meta["config"]),
            "step": int(meta.get("step", 0)),
            "ema": meta.get("ema", "false") == "true",
            "extra": json.loads(meta.get("extra", "{}")),
            "version": meta.get("loracli_version", "?"),
        }
    except (ValueError, TypeError):
        raise UserError(f"'{path}' has corrupt loracli metadata.") from None


def state_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as independent, contiguous CPU tensors (safetensors refuses shared storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def save(model: Any, path: str | os.PathLike, step: int = 0, ema: bool = False,
         extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (a ConditionedModel) to ``path`` atomically; returns the path.

    ``step`` and ``ema`` say where in training the weights come from; ``extra`` is any JSON-able provenance
    (training data, run folder, source file of a conversion).
    """
    from loracli._version import __version__

    model = getattr(model, "module", model)  # unwrap DDP
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    if not hasattr(model, "config"):
        raise TypeError("loracli.save expects a network built by loracli (create_model, load or convert)")
    metadata = {
        "format": FORMAT,
        "loracli_version": __version__,
        "config": json.dumps(model.config, sort_keys=True),
        "step": str(int(step)),
        "ema": "true" if ema else "false",
        "extra": json.dumps(dict(extra or {}), sort_keys=True, default=str),
    }
    path = Path(path)
    tensors = state_tensors(model)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def describe_key_mismatch(missing: list[str], unexpected: list[str], limit: int = 6) -> str:
    """A readable summary of a strict-load mismatch."""
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} ({', '.join(missing[:limit])}{', ...' if len(missing) > limit else ''})")
    if unexpected:
        parts.append(
            f"unexpected {len(unexpected)} ({', '.join(unexpected[:limit])}{', ...' if len(unexpected) > limit else ''})"
        )
    return "; ".join(parts)


def load_state(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Load tensors strictly, or raise a UserError listing missing, unexpected and misshapen keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    shapes = [f"{k} {tuple(tensors[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        detail = describe_key_mismatch(missing, unexpected)
        if shapes:
            detail += ("; " if detail else "") + f"shape mismatch {len(shapes)} ({', '.join(shapes[:4])})"
        raise UserError(f"'{source}' does not fit the network its config describes: {detail}.")
    model.load_state_dict(tensors, strict=True)


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """Rebuild the network stored in a loracli checkpoint; ``model.checkpoint`` holds its metadata."""
    from loracli.build import build_model

    path = Path(path)
    info = read_metadata(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"'{path}' could not be read as safetensors: {exc}.") from None
    model = build_model(info["config"])
    load_state(model, tensors, str(path))
    model.checkpoint = {k: v for k, v in info.items() if k != "config"} | {"path": str(path)}
    return model.to(device).eval()
