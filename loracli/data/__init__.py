"""Training data: the built-in shapes, EDM's dataset zip, image folders and CIFAR-10's python batches.

Contract (the training loop and the FID code use it)::

    open_dataset(path: str | None, resolution: int | None = None) -> ImageDataset
        # path None: the built-in data set (no download); otherwise an EDM dataset zip, an image folder
        # (class = sub-folder, or EDM's layout with dataset.json) or a cifar-10-batches-py folder.
        # Raises UserError for a missing or malformed path.

    class ImageDataset(torch.utils.data.Dataset):
        name: str; resolution: int; channels: int; label_dim: int (0 when unlabelled)
        source: str | None (the path; None for built-in data); builtin: bool
        def __len__(self) -> int
        def __getitem__(self, i) -> tuple[np.ndarray uint8 [C, H, W], int label]   # label -1 when unlabelled
        def provenance(self) -> dict   # what checkpoints record as extra["data"]
"""

from __future__ import annotations

import os
from pathlib import Path

from loracli.data.base import UNLABELLED, ImageDataset, Mirrored
from loracli.data.builtin import BuiltinShapes
from loracli.errors import UserError

__all__ = ["open_dataset", "ImageDataset", "Mirrored", "BuiltinShapes", "UNLABELLED"]


def open_dataset(path: str | os.PathLike | None, resolution: int | None = None) -> ImageDataset:
    """Open training images; ``None`` is the built-in data set at ``resolution`` (default 32)."""
    from loracli.data import cifar, files

    if path is None:
        return BuiltinShapes(resolution or 32)
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"No data set at '{p}'; {files.HOW_TO}, or leave out --data to use the built-in data.")
    if p.is_dir():
        if cifar.is_cifar_folder(p):
            dataset: ImageDataset = cifar.Cifar10(p)
            if resolution is not None and resolution != dataset.resolution:
                raise UserError(f"CIFAR-10 is 32x32 but the model needs {resolution}x{resolution}; pick a 32x32 preset.")
            return dataset
        return files.open_folder(p, resolution)
    if p.name.endswith((".tar.gz", ".tgz")):
        raise UserError(f"'{p}' is an archive; extract it first (tar xzf '{p}') and pass the extracted folder.")
    if p.suffix.lower() != ".zip":
        raise UserError(f"'{p}' is neither a zip file nor a folder; {files.HOW_TO}.")
    return files.open_zip(p, resolution)
