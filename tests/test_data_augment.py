"""EDM's augmentation pipe: the reference's output for fixed parameters, geometry, and the 9 labels."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from loracli.data.augment import AugmentPipe

FIXTURE = Path(__file__).parent / "fixtures" / "augment" / "edm_augment.npz"
EDM_CIFAR = dict(p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
GEOMETRIC = ("scale", "rotate", "aniso", "aniso_angle", "translate")


def zero_params(n: int, **given) -> dict[str, torch.Tensor]:
    params = {"xflip": torch.zeros(n), "yflip": torch.zeros(n), "scale": torch.zeros(n), "rotate": torch.zeros(n),
              "aniso": torch.zeros(n), "aniso_angle": torch.zeros(n), "translate": torch.zeros(n, 2)}
    params.update({k: torch.as_tensor(v, dtype=torch.float32) for k, v in given.items()})
    return params


def smooth_image(size: int = 16) -> torch.Tensor:
    """A smooth, asymmetric test image (band-limited, so resampling barely blurs it)."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    return torch.stack([torch.sin(1.5 * x + 0.5), torch.cos(1.2 * y - 0.3), 0.5 * x * y])[None]


def test_matches_the_reference_pipe_for_fixed_parameters():
    """tests/fixtures/make_augment_fixture.py ran NVlabs/edm's AugmentPipe with these parameters."""
    f = np.load(FIXTURE)
    params = {k[len("param_"):]: torch.from_numpy(f[k]) for k in f.files if k.startswith("param_")}
    pipe = AugmentPipe(p=1, xflip=1, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    images, labels = pipe.apply(torch.from_numpy(f["images"]), params)
    np.testing.assert_allclose(images.numpy(), f["expected"], atol=1e-4)
    np.testing.assert_allclose(labels.numpy(), f["labels"], atol=1e-6)


def test_label_encoding_by_hand():
    pipe = AugmentPipe(**EDM_CIFAR)
    assert pipe.label_dim == 9
    params = zero_params(1, xflip=[1.0], yflip=[0.0], scale=[0.7], rotate=[math.pi / 3], aniso=[2.0],
                         aniso_angle=[math.pi / 2], translate=[[0.25, -0.5]])
    labels = pipe.labels(params)
    expected = [1, 0, 0.7, math.cos(math.pi / 3) - 1, math.sin(math.pi / 3), 2 * math.cos(math.pi / 2), 2.0, 0.25, -0.5]
    assert labels.shape == (1, 9)
    assert labels[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert AugmentPipe(p=0.5, xflip=1, translate_frac=1).label_dim == 3


def test_flips_are_exact_mirrors():
    image = torch.randn(2, 3, 8, 8)
    pipe = AugmentPipe(xflip=1, yflip=1)
    out, labels = pipe.apply(image, {"xflip": torch.tensor([1.0, 0.0]), "yflip": torch.tensor([0.0, 1.0])})
    assert torch.equal(out[0], image[0].flip(2)) and torch.equal(out[1], image[1].flip(1))
    assert labels.tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_quarter_turn_rotates_the_image():
    image = smooth_image()
    pipe = AugmentPipe(rotate_frac=1)
    out, _ = pipe.apply(image, {"rotate": torch.tensor([math.pi / 2])})
    turned = torch.rot90(image, k=1, dims=(2, 3))  # counter-clockwise in array coordinates (y down)
    other = torch.rot90(image, k=-1, dims=(2, 3))
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))
    assert (out - turned)[inner].abs().max() < 0.05 < (out - other)[inner].abs().max()


def test_translation_shifts_by_the_drawn_fraction():
    image = smooth_image()
    pipe = AugmentPipe(translate_frac=1)
    # w = 1 moves by w · 16 px · 0.125 = 2 px in x
    out, labels = pipe.apply(image, {"translate": torch.tensor([[1.0, 0.0]])})
    assert (out[..., 4:-2] - image[..., 2:-4]).abs().max() < 0.05
    assert labels.tolist() == [[1.0, 0.0]]


def test_zero_parameters_leave_the_image_nearly_unchanged_and_scaling_zooms():
    image = smooth_image()
    pipe = AugmentPipe(scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    same, labels = pipe.apply(image, zero_params(1))
    assert (same - image).abs().max() < 0.02 and torch.count_nonzero(labels) == 0
    blob = torch.exp(-((torch.arange(16.0) - 7.5) ** 2)[:, None] / 8 - ((torch.arange(16.0) - 7.5) ** 2)[None] / 8)
    blob = blob.expand(1, 3, 16, 16)
    zoomed, _ = pipe.apply(blob, zero_params(1, scale=[2.5]))  # s = 2^(2.5 · 0.2) = √2
    assert zoomed.sum() == pytest.approx(2 * blob.sum().item(), rel=0.05)  # area grows by s² = 2


def test_draw_respects_probabilities():
    g = torch.Generator().manual_seed(0)
    n = 20_000
    params = AugmentPipe(**EDM_CIFAR).draw(n, g)
    assert set(params) == {"xflip", "yflip", "scale", "rotate", "aniso", "aniso_angle", "translate"}
    assert params["xflip"].mean().item() == pytest.approx(0.5, abs=0.02)  # xflip 1e8 · p ≥ 1: always drawn
    assert (params["yflip"] > 0).float().mean().item() == pytest.approx(0.06, abs=0.01)  # p 0.12, then 50%
    assert (params["scale"] != 0).float().mean().item() == pytest.approx(0.12, abs=0.01)
    assert (params["translate"][:, 0] != 0).eq(params["translate"][:, 1] != 0).all()  # one gate for x and y
    nothing = AugmentPipe(p=0, **{k: v for k, v in EDM_CIFAR.items() if k != "p"}).draw(100, g)
    assert all(torch.count_nonzero(v) == 0 for k, v in nothing.items() if k != "aniso_angle")
