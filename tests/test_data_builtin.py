"""The built-in data set: deterministic, class-balanced, varied, and the default of open_dataset(None)."""

from __future__ import annotations

import numpy as np

from loracli.data import BuiltinShapes, open_dataset
from loracli.data.builtin import CLASSES


def test_open_dataset_none_is_the_builtin_set():
    data = open_dataset(None)
    assert isinstance(data, BuiltinShapes)
    assert (data.resolution, data.channels, data.label_dim, len(data)) == (32, 3, 10, 50_000)
    assert data.provenance() == {"path": None, "name": "builtin-shapes", "builtin": True, "resolution": 32,
                                 "label_dim": 10}
    image, label = data[12345]
    assert image.dtype == np.uint8 and image.shape == (3, 32, 32) and label == 5


def test_items_are_a_pure_function_of_seed_and_index():
    a, b = BuiltinShapes(seed=0), BuiltinShapes(seed=0)
    for i in (0, 7, 49_999):  # fresh instances, any access order
        assert np.array_equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]
    assert not np.array_equal(BuiltinShapes(seed=1)[7][0], a[7][0])


def test_classes_are_balanced():
    data = BuiltinShapes()
    labels = np.array([data[i][1] for i in range(1000)])
    assert np.bincount(labels, minlength=len(CLASSES)).tolist() == [100] * 10


def test_images_vary_within_and_between_classes():
    data = BuiltinShapes()
    images = np.stack([data[i][0] for i in range(60)]).reshape(60, -1).astype(np.int32)
    distances = np.abs(images[:, None] - images[None]).mean(-1)
    assert (distances[~np.eye(60, dtype=bool)] > 2).all()  # no two images alike
    # Each class has its own look: the nearest class mean (over 50 training images per class) recognises
    # held-out images far above chance (10%).
    train = np.stack([data[i][0] for i in range(500)]).reshape(500, -1).astype(np.float32)
    means = np.stack([train[c::10].mean(0) for c in range(10)])
    test = np.stack([data[i][0] for i in range(500, 700)]).reshape(200, -1).astype(np.float32)
    guess = np.argmin(((test[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (guess == np.arange(500, 700) % 10).mean() > 0.5


def test_other_resolutions_render_the_same_scene():
    small, large = BuiltinShapes(16)[3][0], BuiltinShapes(64)[3][0]
    assert small.shape == (3, 16, 16) and large.shape == (3, 64, 64)
    pooled = large.reshape(3, 16, 4, 16, 4).astype(np.float32).mean(axis=(2, 4))
    assert np.abs(pooled - small).mean() < 12
