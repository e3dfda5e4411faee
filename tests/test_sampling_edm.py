"""EDM noise levels and samplers against closed forms: the schedule's test vector, NFE = 2N - 1, the exact
probability-flow solution for Gaussian data (and the methods' orders), and the stochastic sampler's marginals."""

from __future__ import annotations

import math

import pytest
import torch

from loracli.diffusion.edm import SAMPLERS, nfe, noise_levels, sample_euler, sample_heun

# FORMATS.md §1.10: 18 steps, sigma_min 0.002, sigma_max 80, rho 7.
TEST_VECTOR = "80 57.586 40.786 28.375 19.352 12.910 8.401 5.315 3.257 1.923 1.088 0.585 0.296 0.140 0.0600 " \
              "0.0229 0.00753 0.002 0".split()


def test_schedule_matches_the_reference_test_vector():
    sigmas = noise_levels(18)
    assert sigmas.dtype == torch.float64 and len(sigmas) == 19 and sigmas[-1] == 0
    for ours, expected in zip(sigmas.tolist(), TEST_VECTOR):
        assert ours == pytest.approx(float(expected), rel=5e-3)  # printed to 3 or 4 digits
    closed_form = [(80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7 for i in range(18)]
    assert sigmas[:-1].tolist() == pytest.approx(closed_form, rel=1e-12)


def test_schedule_applies_round_sigma():
    sigmas = noise_levels(7, 0.01, 10, round_sigma=lambda s: torch.round(s * 10) / 10)
    unrounded = [(10 ** (1 / 7) + i / 6 * (0.01 ** (1 / 7) - 10 ** (1 / 7))) ** 7 for i in range(7)]
    assert sigmas.tolist() == [round(v * 10) / 10 for v in unrounded] + [0.0]


def gaussian_denoiser(mu: float, s: float, calls: list | None = None):
    """The exact D(x; sigma) for data N(mu, s^2)."""
    def denoise(x, sigma):
        if calls is not None:
            calls.append(float(sigma))
        return mu + s**2 / (s**2 + sigma**2) * (x - mu)
    return denoise


@pytest.mark.parametrize("sampler, steps, expected", [("heun", 18, 35), ("heun", 40, 79), ("euler", 18, 18)])
def test_network_evaluations(sampler, steps, expected):
    calls: list = []
    SAMPLERS[sampler](gaussian_denoiser(0.0, 0.5, calls), torch.zeros(1, 1, 1, 1), noise_levels(steps))
    assert len(calls) == expected == nfe(sampler, steps)
    assert 0.0 not in calls  # the last step is an Euler step: sigma = 0 is never evaluated


def exact_solution(latents: torch.Tensor, mu: float, s: float, sigma_max: float) -> torch.Tensor:
    """The probability-flow ODE from sigma_max to 0 for N(mu, s^2) data: x(0) = mu + s/sqrt(s^2+sigma_max^2) (x_T - mu)."""
    x_t = latents.double() * sigma_max
    return mu + s / math.sqrt(s**2 + sigma_max**2) * (x_t - mu)


def errors(sampler, steps_list, mu=0.3, s=0.5):
    latents = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    exact = exact_solution(latents, mu, s, 80.0)
    return [(sampler(gaussian_denoiser(mu, s), latents, noise_levels(n)) - exact).abs().max().item()
            for n in steps_list]


def test_heun_is_second_order_and_euler_first_order_on_the_exact_gaussian_flow():
    heun = errors(sample_heun, [32, 64, 128])
    euler = errors(sample_euler, [32, 64, 128])
    assert heun[-1] < 2e-3 and heun[0] < 0.25 * euler[0]
    for coarse, fine in zip(heun, heun[1:]):
        assert 3.5 < coarse / fine < 5.0  # halving the step quarters the error
    for coarse, fine in zip(euler, euler[1:]):
        assert 1.8 < coarse / fine < 2.2  # ... or halves it


def test_stochastic_sampler_keeps_the_data_distribution():
    mu, s = 0.2, 0.5
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(8, 1, 32, 32, generator=g)
    noise = lambda x: torch.randn(x.shape, generator=g, dtype=x.dtype)  # noqa: E731
    x = sample_heun(gaussian_denoiser(mu, s), latents, noise_levels(64), randn_like=noise, S_churn=40, S_max=50)
    assert x.mean().item() == pytest.approx(mu, abs=0.03)
    assert x.std().item() == pytest.approx(s, rel=0.03)
    deterministic = sample_heun(gaussian_denoiser(mu, s), latents, noise_levels(64))
    assert (x - deterministic).abs().mean() > 0.05  # the churn really injected noise


def test_churn_draws_noise_at_every_step_even_outside_its_window():
    draws = []

    def noise(x):
        draws.append(1)
        return torch.zeros_like(x)

    sample_heun(gaussian_denoiser(0, 0.5), torch.zeros(1, 1, 1, 1), noise_levels(10), randn_like=noise,
                S_churn=5, S_min=1, S_max=10)
    assert len(draws) == 10  # as the reference, so later steps see the same generator state
