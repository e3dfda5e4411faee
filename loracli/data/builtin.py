"""The built-in data set: ten families of coloured shapes, drawn on the fly, no download.

Each image is a pure function of ``(seed, index)``: its class is ``index % 10`` (so any 10 consecutive indices
hold one image per class) and everything else -- position, size, rotation, colours, background gradient -- is
drawn from a generator seeded with ``(seed, index)``. The classes differ in shape, hue and texture, so a model
that ignores the class label produces a visible mix and FID and class conditioning mean something.
Shapes are rendered at 2x and box-filtered down, which gives anti-aliased edges.
"""

from __future__ import annotations

import colorsys

import numpy as np

from loracli.data.base import ImageDataset

CLASSES = ("disc", "square", "triangle", "ring", "striped square", "cross", "checkered disc", "three dots",
           "star", "crescent")
HUES = (0.0, 0.62, 0.33, 0.15, 0.85, 0.5, 0.07, 0.0, 0.75, 0.42)  # class 7's dots are near-white
DEFAULT_SIZE = 50_000
SUPERSAMPLE = 2


def _disc(u: np.ndarray, v: np.ndarray, cx: float = 0.0, cy: float = 0.0, r: float = 1.0) -> np.ndarray:
    return (u - cx) ** 2 + (v - cy) ** 2 <= r * r


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    inside = np.ones_like(u, dtype=bool)
    for angle in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
        inside &= u * np.cos(angle) + v * np.sin(angle) <= 0.5
    return inside


def _shape(label: int, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask, secondary) in shape coordinates: where the shape is, and where its second tone is."""
    none = np.zeros_like(u, dtype=bool)
    if label == 0:
        return _disc(u, v), none
    if label == 1:
        return np.maximum(abs(u), abs(v)) <= 0.8, none
    if label == 2:
        return _triangle(u * 0.55, v * 0.55 + 0.05), none
    if label == 3:
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.55 ** 2), none
    if label == 4:
        square = np.maximum(abs(u), abs(v)) <= 0.85
        return square, square & (np.sin(u * 3.5 * np.pi) > 0)
    if label == 5:
        return ((abs(u) <= 0.3) & (abs(v) <= 1.0)) | ((abs(v) <= 0.3) & (abs(u) <= 1.0)), none
    if label == 6:
        disc = _disc(u, v)
        return disc, disc & ((np.floor(u * 2.2) + np.floor(v * 2.2)) % 2 == 0)
    if label == 7:
        dots = none.copy()
        for angle in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            dots |= _disc(u, v, 0.62 * np.cos(angle), 0.62 * np.sin(angle), 0.36)
        return dots, none
    if label == 8:
        return np.hypot(u, v) <= 0.6 + 0.4 * np.cos(5 * np.arctan2(v, u)), none
    return _disc(u, v) & ~_disc(u, v, 0.5, 0.1, 0.75), none


def render(seed: int, index: int, resolution: int = 32) -> tuple[np.ndarray, int]:
    """Image ``index`` of the built-in data set with ``seed``: (uint8 ``[3, H, W]``, class)."""
    label = index % len(CLASSES)
    rng = np.random.default_rng([seed, index])
    n = resolution * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / n * 2 - 1
    x, y = np.meshgrid(coords, coords)

    # Background: a desaturated, dark-to-middle colour with a linear gradient in a random direction.
    bg = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.35), rng.uniform(0.08, 0.45)))
    direction = rng.uniform(0, 2 * np.pi)
    ramp = 1 + rng.uniform(0, 0.5) * (x * np.cos(direction) + y * np.sin(direction))
    image = bg[:, None, None] * ramp[None]

    # Foreground: the class's shape at a random place, size and rotation, in the class's hue.
    cx, cy = rng.uniform(-0.35, 0.35, size=2)
    size = rng.uniform(0.32, 0.6)
    theta = rng.uniform(0, 2 * np.pi)
    dx, dy = (x - cx) / size, (y - cy) / size
    u, v = dx * np.cos(theta) + dy * np.sin(theta), -dx * np.sin(theta) + dy * np.cos(theta)
    mask, secondary = _shape(label, u, v)
    saturation = rng.uniform(0.0, 0.15) if label == 7 else rng.uniform(0.65, 1.0)
    colour = np.array(colorsys.hsv_to_rgb((HUES[label] + rng.uniform(-0.03, 0.03)) % 1, saturation,
                                          rng.uniform(0.75, 1.0)))
    image = np.where(mask[None], colour[:, None, None], image)
    image = np.where(secondary[None], 0.4 * colour[:, None, None], image)

    image = image.reshape(3, resolution, SUPERSAMPLE, resolution, SUPERSAMPLE).mean(axis=(2, 4))
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8), label


class BuiltinShapes(ImageDataset):
    """The built-in data set (the default of ``loracli train``): 50,000 images, 10 balanced classes."""

    builtin = True
    label_dim = len(CLASSES)

    def __init__(self, resolution: int = 32, seed: int = 0, size: int = DEFAULT_SIZE) -> None:
        self.resolution, self.seed, self.size = int(resolution), int(seed), int(size)
        self.name = "builtin-shapes"

    def __len__(self) -> int:
        return self.size

    def load(self, i: int) -> tuple[np.ndarray, int]:
        return render(self.seed, i, self.resolution)
