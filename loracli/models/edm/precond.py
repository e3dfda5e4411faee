"""NVlabs/edm's preconditioners: ``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`` around a U-Net.

Constructor arguments, defaults and attributes (``sigma_min``, ``sigma_max``, ``round_sigma``, ...) are the
reference's, so a snapshot's ``_init_kwargs`` build the same network here and EDM's sampler code applies as is.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from loracli.models.edm.dhariwal import DhariwalUNet
from loracli.models.edm.songunet import SongUNet

NETWORKS: dict[str, type[nn.Module]] = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}

Coefficients = tuple[Any, Any, Any, torch.Tensor]


class Precond(nn.Module):
    """What the four preconditioners share: the wrapped network (``self.model``) and the forward pass."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, use_fp16: bool, model_type: str,
                 out_channels: int, model_kwargs: dict[str, Any]) -> None:
        super().__init__()
        if model_type not in NETWORKS:
            raise ValueError(f"model_type must be one of {', '.join(NETWORKS)}, not {model_type!r}")
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16 = use_fp16
        self.model = NETWORKS[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                          out_channels=out_channels, label_dim=label_dim, **model_kwargs)

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        """``(c_skip, c_out, c_in, c_noise)`` for noise levels ``sigma`` of shape ``[N, 1, 1, 1]``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None,
                force_fp32: bool = False, **model_kwargs: Any) -> torch.Tensor:
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        # The reference's fp16 path (CUDA only); loracli's own fast path is bf16 autocast around the whole call.
        dtype = torch.float16 if self.use_fp16 and not force_fp32 and x.device.type == "cuda" else torch.float32
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        f_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        return c_skip * x + c_out * f_x[:, :self.img_channels].to(torch.float32)

    def round_sigma(self, sigma: Any) -> torch.Tensor:
        """The nearest noise level the network supports (all of them, except for iDDPM)."""
        return torch.as_tensor(sigma)


class EDMPrecond(Precond):
    """Karras et al. (2022): ``c_in = 1/sqrt(sigma^2+sigma_data^2)``, ``c_noise = ln(sigma)/4``."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0, sigma_max: float = float("inf"), sigma_data: float = 0.5,
                 model_type: str = "DhariwalUNet", **model_kwargs: Any) -> None:
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, img_channels, model_kwargs)
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        sd2 = self.sigma_data ** 2
        return (sd2 / (sigma ** 2 + sd2), sigma * self.sigma_data / (sigma ** 2 + sd2).sqrt(),
                1 / (sd2 + sigma ** 2).sqrt(), sigma.log() / 4)


class VPPrecond(Precond):
    """Variance preserving (Song et al., 2021): ``sigma(t) = sqrt(exp(beta_d t^2/2 + beta_min t) - 1)``."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000, epsilon_t: float = 1e-5,
                 model_type: str = "SongUNet", **model_kwargs: Any) -> None:
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, img_channels, model_kwargs)
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t
        self.sigma_min = float(self.sigma(torch.as_tensor(epsilon_t, device="cpu")))
        self.sigma_max = float(self.sigma(torch.as_tensor(1, device="cpu")))

    def sigma(self, t: Any) -> torch.Tensor:
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t ** 2) + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma: Any) -> torch.Tensor:
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        return 1, -sigma, 1 / (sigma ** 2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)


class VEPrecond(Precond):
    """Variance exploding (Song et al., 2021): ``c_out = sigma``, ``c_noise = ln(sigma/2)``."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0.02, sigma_max: float = 100, model_type: str = "SongUNet",
                 **model_kwargs: Any) -> None:
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, img_channels, model_kwargs)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        return 1, sigma, 1, (0.5 * sigma).log()


def iddpm_sigmas(M: int, C_1: float, C_2: float) -> torch.Tensor:
    """The ``M + 1`` noise levels ``u_j`` of the discretised cosine schedule, computed as the reference does."""

    def alpha_bar(j: int) -> torch.Tensor:
        return (0.5 * math.pi * torch.as_tensor(j, device="cpu") / M / (C_2 + 1)).sin() ** 2

    u = torch.zeros(M + 1, device="cpu")
    for j in range(M, 0, -1):
        u[j - 1] = ((u[j] ** 2 + 1) / (alpha_bar(j - 1) / alpha_bar(j)).clip(min=C_1) - 1).sqrt()
    return u


class iDDPMPrecond(Precond):  # noqa: N801 -- the reference's class name, which snapshots record
    """Improved DDPM (Nichol & Dhariwal, 2021): sigma snapped to the ``M + 1`` levels ``u``; 2x output channels."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 C_1: float = 0.001, C_2: float = 0.008, M: int = 1000, model_type: str = "DhariwalUNet",
                 **model_kwargs: Any) -> None:
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, img_channels * 2,
                         model_kwargs)
        self.C_1, self.C_2, self.M = C_1, C_2, M
        u = iddpm_sigmas(M, C_1, C_2)
        self.register_buffer("u", u)
        self.sigma_min, self.sigma_max = float(u[M - 1]), float(u[0])

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        c_noise = self.M - 1 - self.round_sigma(sigma, return_index=True).to(torch.float32)
        return 1, -sigma, 1 / (sigma ** 2 + 1).sqrt(), c_noise

    def round_sigma(self, sigma: Any, return_index: bool = False) -> torch.Tensor:
        sigma = torch.as_tensor(sigma)
        index = torch.cdist(sigma.to(self.u.device).to(torch.float32).reshape(1, -1, 1),
                            self.u.reshape(1, -1, 1)).argmin(2)
        result = index if return_index else self.u[index.flatten()].to(sigma.dtype)
        return result.reshape(sigma.shape).to(sigma.device)


PRECONDS: dict[str, type[Precond]] = {"edm": EDMPrecond, "vp": VPPrecond, "ve": VEPrecond, "iddpm": iDDPMPrecond}
