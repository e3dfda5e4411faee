"""The held-out loss (loracli.diffusion.evaluate) against closed forms, and its fixed-noise guarantees."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import loracli
from loracli.diffusion.evaluate import fixed_noise, held_out_loss, sigma_grid, timestep_grid

SIGMA_DATA = 0.5


class Denoiser(nn.Module):
    """An edm-family stand-in: ``D(x; σ) = x · σ_d² / (σ² + σ_d²) ** power`` (power 1: the best linear
    denoiser of data with variance σ_d²; power 0: the identity)."""

    family = "edm"

    def __init__(self, power: float) -> None:
        super().__init__()
        self.power = power

    def forward(self, x, sigma, class_labels=None):
        s2 = sigma.reshape(-1, 1, 1, 1) ** 2
        return x * (SIGMA_DATA ** 2 / (s2 + SIGMA_DATA ** 2)) ** self.power


def gaussian_images(n: int = 4000) -> torch.Tensor:
    return torch.randn(n, 3, 4, 4, generator=torch.Generator().manual_seed(7)) * SIGMA_DATA


def test_edm_weighting_gives_one_for_the_best_linear_denoiser_and_1_plus_snr_inverse_for_the_identity():
    # λ(σ)·E(D − y)² with λ = (σ² + σ_d²)/(σσ_d)²: the linear MMSE σ²σ_d²/(σ² + σ_d²) gives exactly 1, the
    # identity (error σ·n) gives (σ² + σ_d²)/σ_d². 192,000 pixels per level: sampling error well under 2%.
    levels = sigma_grid(8, 0.01, 20.0)
    best = held_out_loss(Denoiser(1.0), gaussian_images(), levels=levels, batch=1000)
    np.testing.assert_allclose(best.per_level, 1.0, rtol=0.02)
    identity = held_out_loss(Denoiser(0.0), gaussian_images(), levels=levels, batch=1000)
    np.testing.assert_allclose(identity.per_level, 1 + levels ** 2 / SIGMA_DATA ** 2, rtol=0.02)
    assert identity.mean == pytest.approx(identity.per_level.mean())


def test_ddpm_loss_is_zero_for_the_true_noise_and_one_for_a_zero_prediction():
    net = loracli.create_model("nano", img_resolution=8, model_channels=8, channel_mult=[1], attn_resolutions=[],
                               channels_per_head=8)
    images = torch.zeros(64, 3, 8, 8)  # x_t = sqrt(1 - ᾱ_t)·ε, so ε = x_t / sqrt(1 - ᾱ_t)
    from loracli.diffusion.gaussian import GaussianDiffusion

    abar = GaussianDiffusion.from_model_config(net.config["model_config"]).tables["alphas_cumprod"]
    net.net.forward = lambda x, t, labels=None: x / (1 - abar[t]).sqrt().reshape(-1, 1, 1, 1).float()
    levels = timestep_grid(16, 1000)
    assert levels[0] == 0 and levels[-1] == 999 and len(levels) == 16
    np.testing.assert_allclose(held_out_loss(net, images).per_level, 0.0, atol=1e-9)

    net.net.forward = lambda x, t, labels=None: torch.zeros_like(x)
    noise = fixed_noise(0, 64, (3, 8, 8))
    np.testing.assert_allclose(held_out_loss(net, images).per_level, float((noise.double() ** 2).mean()), rtol=1e-5)


def test_noise_of_an_image_depends_on_its_index_only_so_batch_size_and_subsets_do_not_matter():
    np.testing.assert_array_equal(fixed_noise(3, 5, (2, 2))[:2], fixed_noise(3, 2, (2, 2)))
    assert not torch.equal(fixed_noise(3, 1, (2, 2)), fixed_noise(4, 1, (2, 2)))
    net = loracli.create_model("edm", img_resolution=8, model_channels=8, channel_mult=[1], num_blocks=1,
                               attn_resolutions=[], augment_dim=0, dropout=0.5)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    one = held_out_loss(net, images, levels=[0.1, 1.0], batch=6)
    assert net.training  # put back in training mode; dropout was off during the evaluation
    np.testing.assert_allclose(held_out_loss(net, images, levels=[0.1, 1.0], batch=4).per_level, one.per_level,
                               rtol=1e-5)
    # uint8 images are mapped to [-1, 1] as training does
    scaled = held_out_loss(net, images.float() / 127.5 - 1, levels=[0.1, 1.0], batch=6)
    np.testing.assert_allclose(scaled.per_level, one.per_level, rtol=1e-6)
