"""EDM noise levels and samplers (Karras et al. 2022, Algorithm 2), as pure functions.

Every sampler has one signature, ``sampler(denoise, latents, sigmas, **options) -> x_0``, where
``denoise(x, sigma) -> D(x; sigma)`` takes and returns float64 and ``sigmas`` is the float64 schedule ending
in 0 (:func:`noise_levels`). The state is kept in float64 as in NVlabs/edm's ``edm_sampler``, so with the same
network, latents and noise the result matches the reference to rounding.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
RandnLike = Callable[[torch.Tensor], torch.Tensor]


def _as_is(sigma: torch.Tensor) -> torch.Tensor:
    return sigma


def noise_levels(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                 round_sigma: Callable[[torch.Tensor], torch.Tensor] = _as_is,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """The EDM schedule ``(σ_max^(1/ρ) + i/(N−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ``, rounded, then ``σ_N = 0``.

    ``sigma_min``/``sigma_max`` should already be clipped to what the network supports; ``round_sigma`` is
    the network's (networks over discrete noise levels round to the nearest one they know).
    """
    if num_steps < 1:
        raise ValueError("num_steps must be at least 1")
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + i / max(num_steps - 1, 1) * (lo - hi)) ** rho
    sigmas = torch.as_tensor(round_sigma(sigmas), dtype=torch.float64, device=sigmas.device)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def nfe(sampler: str, num_steps: int) -> int:
    """Network evaluations per image: Heun's last step is an Euler step, so ``2N − 1``; Euler ``N``."""
    return 2 * num_steps - 1 if sampler == "heun" else num_steps


def _solve(denoise: Denoiser, latents: torch.Tensor, sigmas: torch.Tensor, second_order: bool,
           randn_like: RandnLike, round_sigma: Callable[[torch.Tensor], torch.Tensor], S_churn: float,
           S_min: float, S_max: float, S_noise: float,
           callback: Callable[[int, int], None] | None) -> torch.Tensor:
    num_steps = len(sigmas) - 1
    x_next = latents.to(torch.float64) * sigmas[0]
    for i in range(num_steps):
        x_cur, t_cur, t_next = x_next, sigmas[i], sigmas[i + 1]
        if S_churn > 0:  # the noise is drawn at every step, as in the reference, so seeds line up
            gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0.0
            t_hat = torch.as_tensor(round_sigma(t_cur + gamma * t_cur), dtype=torch.float64, device=t_cur.device)
            x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x_cur)
        else:
            t_hat, x_hat = t_cur, x_cur
        d_cur = (x_hat - denoise(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if second_order and i < num_steps - 1:
            d_prime = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        if callback is not None:
            callback(i, num_steps)
    return x_next


def sample_heun(denoise: Denoiser, latents: torch.Tensor, sigmas: torch.Tensor, *,
                randn_like: RandnLike = torch.randn_like, round_sigma: Callable = _as_is, S_churn: float = 0.0,
                S_min: float = 0.0, S_max: float = float("inf"), S_noise: float = 1.0,
                callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """EDM's sampler: Heun's 2nd-order method, stochastic when ``S_churn > 0`` (``S_min ≤ σ ≤ S_max``)."""
    return _solve(denoise, latents, sigmas, True, randn_like, round_sigma, S_churn, S_min, S_max, S_noise, callback)


def sample_euler(denoise: Denoiser, latents: torch.Tensor, sigmas: torch.Tensor, *,
                 randn_like: RandnLike = torch.randn_like, round_sigma: Callable = _as_is, S_churn: float = 0.0,
                 S_min: float = 0.0, S_max: float = float("inf"), S_noise: float = 1.0,
                 callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Euler's 1st-order method on the same schedule (EDM's ``ablation_sampler`` with ``solver='euler'``)."""
    return _solve(denoise, latents, sigmas, False, randn_like, round_sigma, S_churn, S_min, S_max, S_noise, callback)


SAMPLERS = {"heun": sample_heun, "euler": sample_euler}
