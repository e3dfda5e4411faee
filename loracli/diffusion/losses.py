"""EDM, VP and VE training losses (NVlabs/edm ``training/loss.py``): per-pixel ``λ(σ)·(D(y + σn; σ) − y)²``.

Each loss is its constants, ``sigma(u)`` mapping a random draw ``u`` to a noise level and ``weight(sigma)``.
The caller draws ``u`` (``draw_u``) and the noise ``n`` so that several processes can share one draw for the
global batch; :func:`denoising_loss` does the rest. The ddpm family's loss (IDDPM's hybrid loss) lives in
:meth:`loracli.diffusion.gaussian.GaussianDiffusion.training_losses`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class EDMLoss:
    """EDM: ``ln σ ~ N(P_mean, P_std²)``, ``λ(σ) = (σ² + σ_d²)/(σ·σ_d)²`` (unit loss at every σ at init)."""

    P_mean: float = -1.2
    P_std: float = 1.2
    sigma_data: float = 0.5
    u_distribution = "normal"

    def sigma(self, u: torch.Tensor) -> torch.Tensor:
        return (u * self.P_std + self.P_mean).exp()

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2


@dataclass(frozen=True)
class VPLoss:
    """Song et al.'s VP SDE: ``σ = σ_VP(t)``, ``t = 1 + u(ε_t − 1)``, ``u ~ U(0, 1)``; ``λ = 1/σ²``."""

    beta_d: float = 19.9
    beta_min: float = 0.1
    epsilon_t: float = 1e-5
    u_distribution = "uniform"

    def sigma(self, u: torch.Tensor) -> torch.Tensor:
        t = 1 + u * (self.epsilon_t - 1)
        return ((0.5 * self.beta_d * t ** 2 + self.beta_min * t).exp() - 1).sqrt()

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return 1 / sigma ** 2


@dataclass(frozen=True)
class VELoss:
    """Song et al.'s VE SDE: ``σ = σ_min·(σ_max/σ_min)^u``, ``u ~ U(0, 1)``; ``λ = 1/σ²``."""

    sigma_min: float = 0.02
    sigma_max: float = 100.0
    u_distribution = "uniform"

    def sigma(self, u: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** u

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return 1 / sigma ** 2


LOSSES: dict[str, Callable[..., Any]] = {"edm": EDMLoss, "vp": VPLoss, "ve": VELoss}


def draw_u(loss: Any, n: int, generator: torch.Generator | None = None,
           device: torch.device | str = "cpu") -> torch.Tensor:
    """The loss's random draw for ``n`` images (standard normal or uniform on [0, 1))."""
    sample = torch.randn if loss.u_distribution == "normal" else torch.rand
    return sample([n], generator=generator, device=device)


def denoising_loss(loss: Any, net: Callable[..., torch.Tensor], y: torch.Tensor, u: torch.Tensor,
                   noise: torch.Tensor, labels: Any = None, augment_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel loss ``λ(σ)·(D(y + σn; σ) − y)²`` of an edm-family network on clean images ``y``."""
    sigma = loss.sigma(u.to(torch.float32)).reshape(-1, 1, 1, 1)
    denoised = net(y + noise * sigma, sigma.flatten(), labels, augment_labels=augment_labels)
    return loss.weight(sigma) * (denoised.to(torch.float32) - y) ** 2
