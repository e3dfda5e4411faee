"""EDM, VP and VE losses against hand-computed values (NVlabs/edm training/loss.py, FORMATS.md 1.9)."""

from __future__ import annotations

import math

import pytest
import torch

from loracli.diffusion.losses import EDMLoss, VELoss, VPLoss, denoising_loss, draw_u


class ZeroNet:
    """D(x; σ) = 0, recording what it was called with."""

    def __call__(self, x, sigma, labels=None, augment_labels=None):
        self.x, self.sigma, self.labels, self.augment_labels = x, sigma, labels, augment_labels
        return torch.zeros_like(x)


def test_edm_noise_level_and_weight():
    loss = EDMLoss()
    # ln σ = u·1.2 − 1.2
    assert loss.sigma(torch.tensor([0.0])).item() == pytest.approx(0.30119421191220214)  # e^-1.2
    assert loss.sigma(torch.tensor([1.0])).item() == pytest.approx(1.0)
    assert loss.sigma(torch.tensor([-1.0])).item() == pytest.approx(0.09071795328941251)  # e^-2.4
    # λ(σ) = (σ² + 0.25) / (0.25 σ²)
    assert loss.weight(torch.tensor(0.5)).item() == pytest.approx(8.0)
    assert loss.weight(torch.tensor(1.0)).item() == pytest.approx(5.0)
    assert loss.weight(torch.tensor(2.0)).item() == pytest.approx(4.25)


def test_vp_noise_level_range_and_weight():
    loss = VPLoss()
    # u = 0 -> t = 1: sqrt(exp(19.9/2 + 0.1) − 1); u = 1 -> t = 1e-5 (FORMATS: [0.0010005, 152.17])
    assert loss.sigma(torch.tensor([0.0], dtype=torch.float64)).item() == pytest.approx(152.16697, abs=1e-4)
    assert loss.sigma(torch.tensor([1.0], dtype=torch.float64)).item() == pytest.approx(0.00100050, rel=1e-5)
    assert loss.weight(torch.tensor(0.5)).item() == pytest.approx(4.0)


def test_ve_noise_level_range_and_weight():
    loss = VELoss()
    assert loss.sigma(torch.tensor([0.0])).item() == pytest.approx(0.02)
    assert loss.sigma(torch.tensor([1.0])).item() == pytest.approx(100.0)
    assert loss.sigma(torch.tensor([0.5])).item() == pytest.approx(math.sqrt(2))
    assert loss.weight(torch.tensor(0.1)).item() == pytest.approx(100.0)


def test_denoising_loss_by_hand():
    """With D = 0, y = 0.5, n = 1, u = 0: the net sees y + σ·n at σ = e^-1.2; loss = λ(σ)·0.25 per pixel."""
    net = ZeroNet()
    y = torch.full((2, 3, 4, 4), 0.5)
    noise = torch.ones_like(y)
    u = torch.tensor([0.0, 1.0])
    per_pixel = denoising_loss(EDMLoss(), net, y, u, noise, labels="L", augment_labels="A")
    s0 = math.exp(-1.2)
    expected0 = (s0 ** 2 + 0.25) / (s0 ** 2 * 0.25) * 0.25  # 3.7558...
    assert per_pixel.shape == y.shape
    assert per_pixel[0].flatten().tolist() == pytest.approx([expected0] * 48, rel=1e-6)
    assert per_pixel[1].flatten().tolist() == pytest.approx([5.0 * 0.25] * 48, rel=1e-6)
    assert net.sigma.tolist() == pytest.approx([s0, 1.0])
    assert net.x[0].flatten().tolist() == pytest.approx([0.5 + s0] * 48)
    assert (net.labels, net.augment_labels) == ("L", "A")


def test_perfect_denoiser_has_zero_loss():
    y = torch.randn(3, 3, 4, 4)
    loss = denoising_loss(VELoss(), lambda x, s, labels, augment_labels=None: y, y, torch.rand(3), torch.randn_like(y))
    assert torch.count_nonzero(loss) == 0


def test_draws_follow_each_loss_distribution():
    g = torch.Generator().manual_seed(0)
    log_sigma = EDMLoss().sigma(draw_u(EDMLoss(), 200_000, g)).log()
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.01)
    assert log_sigma.std().item() == pytest.approx(1.2, abs=0.01)
    u = draw_u(VELoss(), 200_000, g)
    assert 0 <= u.min().item() and u.max().item() < 1 and u.mean().item() == pytest.approx(0.5, abs=0.01)
