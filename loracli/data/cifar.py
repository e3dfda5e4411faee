"""CIFAR-10 from its python-format folder (``cifar-10-batches-py``), read without trusting the pickles.

The batches are pickles of dicts holding a uint8 array ``data`` ``[10000, 3072]`` (CHW order) and a list
``labels``. They are read with an unpickler that can rebuild numpy arrays and nothing else, so a tampered file
cannot run code. The five training batches make the data set, as in NVlabs/edm's dataset_tool.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from loracli.data.base import ImageDataset
from loracli.errors import UserError
from loracli.io.convert.pickle_scan import scan

TRAIN_BATCHES = tuple(f"data_batch_{k}" for k in range(1, 6))
FOLDER = "cifar-10-batches-py"
HOW_TO = "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract it"

# What a numpy array pickle may refer to (numpy 1 and 2 module names); _codecs.encode turns the latin-1 text
# that protocol-2 pickles use for raw bytes back into bytes.
ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
})


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's own signature
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refers to {module}.{name}")
        return super().find_class(module, name)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 images ``[n, 3, 32, 32]``, int64 labels ``[n]``)."""
    try:
        with open(path, "rb") as f:
            scan(f)  # nesting, memo and declared sizes bounded before anything is built
            f.seek(0)
            batch = _ArrayUnpickler(f, encoding="latin1").load()
        data = np.asarray(batch["data"])
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, AttributeError,
            RecursionError, MemoryError) as exc:
        raise UserError(f"'{path}' is not a CIFAR-10 python batch ({exc}); {HOW_TO}.") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),) \
            or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise UserError(f"'{path}' does not hold CIFAR-10 images and labels; {HOW_TO}.")
    return data.reshape(-1, 3, 32, 32), labels


def is_cifar_folder(path: Path) -> bool:
    return (path / TRAIN_BATCHES[0]).is_file() or (path / FOLDER / TRAIN_BATCHES[0]).is_file()


class Cifar10(ImageDataset):
    """The 50,000 CIFAR-10 training images, held in memory (150 MB)."""

    name = "cifar10"
    resolution = 32
    label_dim = 10

    def __init__(self, path: Path) -> None:
        folder = path if (path / TRAIN_BATCHES[0]).is_file() else path / FOLDER
        missing = [b for b in TRAIN_BATCHES if not (folder / b).is_file()]
        if missing:
            raise UserError(f"'{folder}' lacks {', '.join(missing)}; {HOW_TO}.")
        parts = [read_batch(folder / b) for b in TRAIN_BATCHES]
        self.images = np.concatenate([p[0] for p in parts])
        self.labels = np.concatenate([p[1] for p in parts])
        self.source = str(folder)

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i].copy(), int(self.labels[i])
