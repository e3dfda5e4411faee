"""Images from files: EDM's dataset zip (or the same layout as a folder) and plain class-per-folder trees.

EDM layout: PNG/JPEG files plus an optional ``dataset.json`` ``{"labels": [[name, class], ...]}`` (or
``null``); files are read in sorted name order, as ``training/dataset.py`` does. Class folders: every image
sits in a sub-folder and the sorted sub-folder names are the classes; images in the root make the set
unlabelled.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from loracli.data.base import IMAGE_EXTENSIONS, UNLABELLED, ImageDataset, decode_image, image_size
from loracli.errors import UserError

LABELS_FILE = "dataset.json"
HOW_TO = ("pass an EDM dataset zip (NVlabs/edm dataset_tool.py), a folder of PNG/JPEG images with one sub-folder "
          "per class, or a cifar-10-batches-py folder")


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _edm_labels(text: bytes, names: list[str], where: str) -> tuple[list[int], int]:
    """Labels from EDM's dataset.json, in the order of ``names``."""
    try:
        labels = json.loads(text)["labels"]
        if labels is None:
            return [UNLABELLED] * len(names), 0
        table = {str(name).replace("\\", "/"): label for name, label in labels}
    except (ValueError, KeyError, TypeError):
        raise UserError(f"'{where}' is not EDM's dataset.json format ({{\"labels\": [[name, class], ...]}}).") from None
    missing = [n for n in names if n not in table]
    if missing:
        raise UserError(f"'{where}' has no label for '{missing[0]}' ({len(missing)} images unlabelled); "
                        "label every image or set \"labels\": null.")
    values = [table[n] for n in names]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise UserError(f"'{where}' holds labels that are not class indices; loracli trains on integer classes.")
    return values, max(values) + 1


class FileImages(ImageDataset):
    """Images read by name through ``read(name) -> bytes``, labels given per image."""

    def __init__(self, source: str, name: str, names: list[str], labels: list[int], label_dim: int,
                 read: Callable[[str], bytes], resolution: int | None) -> None:
        self.source, self.name, self.names = source, name, names
        self.labels = np.asarray(labels, dtype=np.int64)
        self.label_dim = label_dim
        self._read = read
        self.resolution = image_size(read(names[0]), f"{source}/{names[0]}")
        if resolution is not None and resolution != self.resolution:
            raise UserError(f"The images in '{source}' are {self.resolution}x{self.resolution} but the model needs "
                            f"{resolution}x{resolution}; resize the data or pick a matching preset.")

    def __len__(self) -> int:
        return len(self.names)

    def load(self, i: int) -> tuple[np.ndarray, int]:
        name = self.names[i]
        return decode_image(self._read(name), f"{self.source}/{name}", self.resolution), int(self.labels[i])


class _ZipReader:
    """Reads members of a zip; reopens it in each process (a handle shared across fork would interleave reads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        self._pid = -1

    def __call__(self, name: str) -> bytes:
        if self._zip is None or self._pid != os.getpid():
            self._zip, self._pid = zipfile.ZipFile(self.path), os.getpid()
        return self._zip.read(name)

    def __getstate__(self) -> dict:
        return {"path": self.path, "_zip": None, "_pid": -1}


def open_zip(path: Path, resolution: int | None) -> FileImages:
    try:
        with zipfile.ZipFile(path) as z:
            members = set(z.namelist())
            labels_text = z.read(LABELS_FILE) if LABELS_FILE in members else None
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"'{path}' is not a readable zip file ({exc}); {HOW_TO}.") from None
    names = sorted(n for n in members if _is_image(n))
    if not names:
        raise UserError(f"The zip '{path}' holds no PNG or JPEG images; {HOW_TO}.")
    labels, label_dim = (_edm_labels(labels_text, names, f"{path}/{LABELS_FILE}") if labels_text is not None
                         else ([UNLABELLED] * len(names), 0))
    return FileImages(str(path), path.stem, names, labels, label_dim, _ZipReader(path), resolution)


def open_folder(path: Path, resolution: int | None) -> FileImages:
    names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() and _is_image(p.name))
    if not names:
        raise UserError(f"The folder '{path}' holds no PNG or JPEG images; {HOW_TO}.")
    if (path / LABELS_FILE).is_file():
        labels, label_dim = _edm_labels((path / LABELS_FILE).read_bytes(), names, str(path / LABELS_FILE))
    elif all("/" in n for n in names):
        classes = sorted({n.split("/", 1)[0] for n in names})
        index = {c: k for k, c in enumerate(classes)}
        labels, label_dim = [index[n.split("/", 1)[0]] for n in names], len(classes)
    else:
        labels, label_dim = [UNLABELLED] * len(names), 0
    return FileImages(str(path), path.name, names, labels, label_dim, lambda n: (path / n).read_bytes(), resolution)
