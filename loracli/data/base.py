"""What every data set gives the training loop and the FID code: uint8 CHW images and integer class labels."""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
import torch

from loracli.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
UNLABELLED = -1


class ImageDataset(torch.utils.data.Dataset):
    """Square RGB images of one size, as ``(uint8 [C, H, W], int label)``; the label is -1 when unlabelled.

    Subclasses set ``name``, ``resolution``, ``label_dim`` (0 when unlabelled) and implement ``__len__`` and
    ``load(i)``. ``source`` is the path the data came from (``None`` for built-in data).
    """

    name: str = "dataset"
    resolution: int = 32
    channels: int = 3
    label_dim: int = 0
    source: str | None = None
    builtin: bool = False

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, i: int) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        return self.load(int(i))

    def provenance(self) -> dict:
        """Where the data came from, as every checkpoint's ``extra["data"]`` records it."""
        return {"path": self.source, "name": self.name, "builtin": self.builtin, "resolution": self.resolution,
                "label_dim": self.label_dim}


def _unreadable(where: str, exc: Exception) -> UserError:
    """The sentence for a file PIL cannot read, naming the file (PIL's own message names an in-memory buffer)."""
    why = "not an image PIL can read" if isinstance(exc, PIL.UnidentifiedImageError) else str(exc)
    return UserError(f"Cannot decode the image '{where}' ({why}); replace or remove it.")


def decode_image(data: bytes, where: str, resolution: int) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 RGB ``[3, H, W]``, refusing images of another size."""
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            array = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as exc:
        raise _unreadable(where, exc) from None
    if array.shape[:2] != (resolution, resolution):
        raise UserError(
            f"The image '{where}' is {array.shape[1]}x{array.shape[0]} but the data set is "
            f"{resolution}x{resolution}; resize all images to one square size."
        )
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def image_size(data: bytes, where: str) -> int:
    """The side of a square image, read from its header; a UserError for non-square or unreadable files."""
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except (OSError, ValueError) as exc:
        raise _unreadable(where, exc) from None
    if width != height:
        raise UserError(f"The image '{where}' is {width}x{height}; loracli trains on square images of one size.")
    return width


class Mirrored(ImageDataset):
    """EDM's dataset x-flip: the data set twice, the second copy mirrored left-right."""

    def __init__(self, base: ImageDataset) -> None:
        self.base = base
        self.name, self.resolution, self.channels = base.name, base.resolution, base.channels
        self.label_dim, self.source, self.builtin = base.label_dim, base.source, base.builtin

    def __len__(self) -> int:
        return 2 * len(self.base)

    def load(self, i: int) -> tuple[np.ndarray, int]:
        n = len(self.base)
        image, label = self.base[i % n]
        return (np.ascontiguousarray(image[:, :, ::-1]) if i >= n else image), label
