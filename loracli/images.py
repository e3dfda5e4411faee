"""Images in and out of the networks: uint8 <-> [-1, 1] as EDM does it, PNG files and grids (atomic writes)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from loracli.io.atomic import atomic_path


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` images -> uint8 as NVlabs/edm's generate.py: ``(x·127.5 + 128).clip(0, 255)`` truncated."""
    return (x * 127.5 + 128).clip(0, 255).to(torch.uint8)


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> fp32 in ``[-1, 1]``, as NVlabs/edm's training loop feeds them to the network."""
    return x.to(torch.float32) / 127.5 - 1


def seed_filename(seed: int, subdirs: bool = False) -> str:
    """``000003.png``, or with ``subdirs`` inside a folder per 1000 seeds (``001000/001234.png``), as EDM."""
    name = f"{seed:06d}.png"
    return f"{seed - seed % 1000:06d}/{name}" if subdirs else name


def _pil(image: np.ndarray) -> PIL.Image.Image:
    """An HWC (or HW) uint8 array as a PIL image: grey for one channel, RGB for three."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return PIL.Image.fromarray(np.ascontiguousarray(image), "L" if image.ndim == 2 else "RGB")


def save_png(path: str | os.PathLike, image: torch.Tensor | np.ndarray) -> None:
    """Write one uint8 image ``[C, H, W]`` as a PNG, atomically."""
    array = np.asarray(image.cpu() if isinstance(image, torch.Tensor) else image)
    with atomic_path(path) as tmp:
        _pil(array.transpose(1, 2, 0)).save(tmp, format="PNG")


def make_grid(images: torch.Tensor | np.ndarray, columns: int | None = None) -> np.ndarray:
    """Tile uint8 images ``[N, C, H, W]`` into one ``[rows·H, columns·W, C]`` array (square-ish by default)."""
    array = np.asarray(images.cpu() if isinstance(images, torch.Tensor) else images)
    n, c, h, w = array.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.zeros((rows * h, columns * w, c), dtype=np.uint8)
    for k in range(n):
        r, col = divmod(k, columns)
        grid[r * h:(r + 1) * h, col * w:(col + 1) * w] = array[k].transpose(1, 2, 0)
    return grid


def save_grid(path: str | os.PathLike, images: torch.Tensor | np.ndarray, columns: int | None = None) -> Path:
    """Write uint8 images ``[N, C, H, W]`` as one grid PNG (what sampling and training snapshots show)."""
    with atomic_path(path) as tmp:
        _pil(make_grid(images, columns)).save(tmp, format="PNG")
    return Path(path)
