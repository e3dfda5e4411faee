"""What every generated set and every FID records about where it came from: files, hashes, seeds, dates."""

from __future__ import annotations

import datetime
import hashlib
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def header_sha256(path: str | os.PathLike) -> str:
    """sha256 of a safetensors file's header (tensor table + metadata): identifies a checkpoint cheaply."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return hashlib.sha256(f.read(n)).hexdigest()


def array_sha256(*arrays: np.ndarray) -> str:
    """sha256 of float64 little-endian C-order arrays: the hash of statistics, whatever file held them."""
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a, dtype="<f8").tobytes())
    return digest.hexdigest()


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def checkpoint_provenance(path: str | os.PathLike, checkpoint: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's identity: path, header hash, model and conditioning, training step and data."""
    return {
        "path": str(Path(path).resolve()),
        "header_sha256": header_sha256(path),
        "model": config.get("model"),
        "preset": config.get("preset"),
        "cond": config.get("cond", []),
        "only_lora": config.get("only_lora", False),
        "label_dim": int(config.get("model_config", {}).get("label_dim", 0) or 0),
        "step": checkpoint.get("step"),
        "ema": checkpoint.get("ema"),
        "data": (checkpoint.get("extra") or {}).get("data"),
    }
