"""loracli's sampling reproduces NVlabs/edm's generate.py image for image.

The expected arrays were made by the reference's own ``edm_sampler`` / ``ablation_sampler`` and
``StackedRandomGenerator`` (tests/fixtures/make_sampling_fixtures.py): per-seed generators, latents, the class
drawn after the latents (even when --class overrides it), churn noise from the same generators, round_sigma and
sigma clipping, ``(x * 127.5 + 128).clip(0, 255)`` to uint8.
"""

from __future__ import annotations

import importlib.util
import lzma
from pathlib import Path

import numpy as np
import pytest
import torch

import loracli
from loracli.generate import generate

FIXTURES = Path(__file__).parent / "fixtures"
ANALYTIC = np.load(FIXTURES / "sampling" / "edm_analytic.npz")
NETWORKS = np.load(FIXTURES / "sampling" / "edm_networks.npz")


def fixture_script():
    spec = importlib.util.spec_from_file_location("make_sampling_fixtures", FIXTURES / "make_sampling_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCRIPT = fixture_script()


def sampler_arguments(kwargs: dict) -> dict:
    kwargs = dict(kwargs)
    return {"steps": kwargs.pop("num_steps"), "sampler": kwargs.pop("solver", "heun"), **kwargs}


@pytest.mark.parametrize("case", list(SCRIPT.CASES))
def test_closed_form_denoiser_gives_the_reference_images_at_any_batch_size(case):
    label_dim, class_idx, seeds, kwargs = SCRIPT.CASES[case]
    data_std, sigma_max, sigma_step = ANALYTIC["constants"]
    net = SCRIPT.GaussianDenoiser(ANALYTIC["pattern"], label_dim, float(data_std), float(sigma_max), float(sigma_step))
    net.family = "edm"  # what loracli reads off a network it did not build
    for batch in (1, 4):
        batches = list(generate(net, seeds, class_idx, batch=batch, **sampler_arguments(kwargs)))
        images = torch.cat([b.images for b in batches]).numpy()
        np.testing.assert_array_equal(images, ANALYTIC[f"{case}/images"])
        if label_dim:
            labels = torch.cat([b.labels for b in batches]).numpy()
            np.testing.assert_array_equal(labels, ANALYTIC[f"{case}/labels"])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The tiny reference networks of tests/fixtures/edm, read by loracli's converter."""
    from loracli.io.convert import convert_model

    folder = tmp_path_factory.mktemp("edm")

    def load(name: str):
        path = folder / f"{name}.pkl"
        if not path.exists():
            path.write_bytes(lzma.decompress((FIXTURES / "edm" / f"{name}.pkl.xz").read_bytes()))
        return convert_model(path)

    return load


@pytest.mark.parametrize("case", list(SCRIPT.NETWORK_CASES))
def test_converted_edm_networks_give_the_reference_images(case, converted):
    network, class_idx, seeds, kwargs = SCRIPT.NETWORK_CASES[case]
    net = converted(network)
    images = loracli.sample(net, seeds, class_labels=class_idx, batch=2, **sampler_arguments(kwargs)).numpy()
    expected = NETWORKS[f"{case}/images"]
    assert images.shape == expected.shape
    assert np.abs(images.astype(int) - expected).max() <= 1  # the same image up to one grey level
    assert (images == expected).mean() > 0.99
