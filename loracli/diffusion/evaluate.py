"""Held-out denoising loss on a fixed grid of noise levels with fixed noise (PAPER.md §7.2's primary metric).

Two networks trained on the same data are compared on the same held-out images, the same noise levels and
the same noise, so the comparison has little variance even on a few hundred images: the noise of image i
comes from its own generator seeded with ``(seed, i)``, the same at every level, whatever the batch size or
device. Per level, the loss is the family's training loss at that level:

- edm family: EDM's weighted loss ``λ(σ)·(D(y + σn; σ) − y)²`` with ``λ(σ) = (σ² + σ_d²)/(σ·σ_d)²``
  (1 at every σ for the best linear denoiser of data with variance σ_d²),
- ddpm family: L_simple, ``(ε̂(x_t, t) − ε)²`` (the epsilon channels of a network with learned variances),

each averaged over images and pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from loracli.diffusion.losses import EDMLoss
from loracli.images import from_uint8


@dataclass(frozen=True)
class HeldOutLoss:
    """The loss at each level of ``levels`` (σ for the edm family, integer timesteps for ddpm) and their mean."""

    levels: np.ndarray
    per_level: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.per_level.mean())


def sigma_grid(count: int = 16, sigma_min: float = 0.002, sigma_max: float = 80.0) -> np.ndarray:
    """``count`` log-spaced noise levels from ``sigma_min`` to ``sigma_max`` (EDM's sampling range)."""
    return np.geomspace(sigma_min, sigma_max, count)


def timestep_grid(count: int, num_timesteps: int) -> np.ndarray:
    """``count`` evenly spaced integer timesteps from 0 to ``num_timesteps - 1``."""
    return np.unique(np.rint(np.linspace(0, num_timesteps - 1, count)).astype(np.int64))


def fixed_noise(seed: int, count: int, shape: Sequence[int]) -> torch.Tensor:
    """Noise ``[count, *shape]`` on the CPU; row i depends on ``(seed, i)`` only."""
    rows = []
    for i in range(count):
        state = np.random.SeedSequence([seed, i]).generate_state(1, np.uint64)[0] >> np.uint64(1)
        rows.append(torch.randn(list(shape), generator=torch.Generator().manual_seed(int(state))))
    return torch.stack(rows)


def _as_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in 0..255 to the networks' [-1, 1]; float images are taken as already scaled."""
    images = torch.as_tensor(images)
    return from_uint8(images) if images.dtype == torch.uint8 else images.to(torch.float32)


def held_out_loss(net: Any, images: torch.Tensor, labels: Any = None, levels: Sequence[float] | None = None,
                  seed: int = 0, batch: int = 256, sigma_data: float = 0.5) -> HeldOutLoss:
    """The family's denoising loss of ``net`` on ``images`` at each of ``levels``, with fixed noise.

    ``images``: uint8 ``[N, C, H, W]`` (or floats in [-1, 1]); ``labels``: what the network takes as class
    labels (integer classes or class vectors), None for an unconditional network. ``levels``: σ values for
    the edm family (default :func:`sigma_grid`), integer timesteps for the ddpm family (default 16 of
    :func:`timestep_grid`). The network runs where its weights are, in eval mode (no dropout), and is put
    back in the mode it was in.
    """
    from loracli.generate import diffusion_config, family_of

    y_all = _as_model_input(images)
    noise_all = fixed_noise(seed, len(y_all), y_all.shape[1:])
    labels_all = None if labels is None else torch.as_tensor(labels)
    family = family_of(net)
    if family == "edm":
        grid = np.asarray(sigma_grid() if levels is None else levels, dtype=np.float64)
        weighting = EDMLoss(sigma_data=sigma_data)
    else:
        from loracli.diffusion.gaussian import GaussianDiffusion

        diffusion = GaussianDiffusion.from_model_config(diffusion_config(net))
        grid = (timestep_grid(16, diffusion.num_timesteps) if levels is None else np.asarray(levels, dtype=np.int64))
    totals = np.zeros(len(grid), dtype=np.float64)
    weight = next(net.parameters(), None)
    device = weight.device if weight is not None else torch.device("cpu")
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(y_all), batch):
                y = y_all[start:start + batch].to(device)
                noise = noise_all[start:start + batch].to(device)
                lab = None if labels_all is None else labels_all[start:start + batch].to(device)
                for k, level in enumerate(grid):
                    if family == "edm":
                        sigma = torch.full((len(y),), float(level), device=device)
                        denoised = net(y + noise * float(level), sigma, lab).to(torch.float32)
                        loss = weighting.weight(sigma).reshape(-1, 1, 1, 1) * (denoised - y) ** 2
                    else:
                        t = torch.full((len(y),), int(level), dtype=torch.long, device=device)
                        loss = diffusion.training_losses(net, y, t, lab, noise)["mse"]
                    totals[k] += float(loss.to(torch.float64).sum()) / loss[0].numel()
    finally:
        net.train(was_training)
    return HeldOutLoss(levels=grid, per_level=totals / len(y_all))
