"""IDDPM's Gaussian diffusion over integer timesteps (ddpm family), numerically as openai/improved-diffusion.

Schedules (cosine, linear), the posterior q(x_{t-1} | x_t, x_0), learned-range or fixed variances, the hybrid
training loss and ancestral / DDIM sampling, with respacing ("250", "10,15,20", "ddim50"). Schedule arrays are
computed in float64 exactly as the reference does and cast to the state's dtype when used (fp32 states get the
reference's fp32 coefficients).

Contract (the train loop and the sampler code against it):

class GaussianDiffusion:
    num_timesteps: int                 # after respacing
    timestep_map: torch.Tensor         # spaced index -> original timestep (what the network receives)

    @classmethod
    def from_model_config(cls, model_config, steps=None, fixed_variance=None) -> GaussianDiffusion
        # reads diffusion_steps, noise_schedule, learn_sigma (and fixed_variance, default "large") from a
        # ddpm-family model config;
        # steps: None (all T), an int or a respacing string like "250", "10,15,20" or "ddim50".

    def training_losses(self, model, x0, t, class_labels=None, noise=None) -> dict[str, Tensor]
        # per-sample losses: "loss" (hybrid "mse" + "vb" when learn_sigma, else "mse"), "mse", and "vb" when
        # learned; t are indices into this (possibly respaced) process; model is called as
        # model(x_t, timestep_map[t], class_labels).

    def sample(self, model, noise, class_labels=None, *, sampler="ancestral", eta=0.0, clip_denoised=True,
               randn_like=torch.randn_like, progress=None) -> Tensor
        # runs the reverse process from noise (x_T); sampler "ancestral" or "ddim"; all fresh noise is drawn
        # through randn_like(x), once per step as the reference does (even where it is multiplied by zero), so
        # callers can make image k depend on seed k only; progress(i, n) is called after step i of n
        # (i = 1..n); returns the final x_0 estimate, in [-1, 1] up to the last step's rounding (not clamped).

The network applies improved-diffusion's timestep rescaling (``t * 1000 / T``) itself, so this module always
hands it original integer timesteps.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np
import torch

from loracli.errors import UserError

SAMPLERS = ("ancestral", "ddim")
FIXED_VARIANCES = ("large", "small")


# -- schedules and respacing ---------------------------------------------------------------------------------
def cosine_betas(num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """``beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta)`` with ``abar(u) = cos((u + 0.008)/1.008 pi/2)^2``."""

    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
                     for i in range(num_timesteps)], dtype=np.float64)


def linear_betas(num_timesteps: int) -> np.ndarray:
    """Ho et al.'s 1e-4 .. 0.02 over 1000 steps, scaled by ``1000 / T`` to keep the process for any T."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)


SCHEDULES: dict[str, Callable[[int], np.ndarray]] = {"cosine": cosine_betas, "linear": linear_betas}


def check_schedule(schedule: str) -> str:
    """``schedule`` if it names a known noise schedule, else a UserError listing them."""
    if schedule not in SCHEDULES:
        raise UserError(f"Unknown noise schedule '{schedule}'; use one of: {', '.join(SCHEDULES)}.")
    return schedule


def named_betas(schedule: str, num_timesteps: int) -> np.ndarray:
    return SCHEDULES[check_schedule(schedule)](num_timesteps)


def space_timesteps(num_timesteps: int, spacing: str) -> list[int]:
    """The retained original timesteps, ascending, for improved-diffusion's respacing strings.

    ``"ddimN"``: the single integer stride giving exactly N steps (the DDIM paper's). ``"a,b,c"``: the process
    is cut into equal sections and section k keeps ``a``, ``b``, ``c`` evenly spread steps (rounded).
    """
    spacing = spacing.strip()
    if spacing.startswith("ddim"):
        desired = _parse_count(spacing[4:], spacing)
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == desired:
                return list(range(0, num_timesteps, stride))
        raise UserError(f"'{spacing}' cannot take exactly {desired} of {num_timesteps} steps with one integer "
                        "stride; pick another count.")
    counts = [_parse_count(c, spacing) for c in spacing.split(",")]
    size_per, extra = divmod(num_timesteps, len(counts))
    start, steps = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise UserError(f"Respacing '{spacing}' asks for {count} steps from a section of {size} of the "
                            f"{num_timesteps} timesteps; ask for fewer.")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0  # accumulated, not k * stride: the reference's rounding depends on it
        for _ in range(count):
            steps.append(start + round(position))
            position += stride
        start += size
    return sorted(set(steps))


def _parse_count(text: str, spacing: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise UserError(f"Bad step spacing '{spacing}'; use a step count like 250, sections like 10,15,20, "
                        "or ddim50.")
    return count


def respaced_betas(betas: np.ndarray, use_timesteps: list[int]) -> np.ndarray:
    """Betas of the process that visits only ``use_timesteps``: ``1 - abar_s / abar_prev`` (same abar there)."""
    alphas_cumprod = np.cumprod(1.0 - betas)
    new, last = [], 1.0
    for i in use_timesteps:
        new.append(1 - alphas_cumprod[i] / last)
        last = alphas_cumprod[i]
    return np.array(new, dtype=np.float64)


# -- likelihood helpers --------------------------------------------------------------------------------------
def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=list(range(1, x.ndim)))


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of the standard normal CDF the reference uses (so its bits/dim reproduce)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log P(x) in nats of a Gaussian integrated over x's 8-bit bin (width 2/255; open-ended at -1 and 1)."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _nonzero(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """1 where t > 0, 0 at t = 0 (the last step adds no noise), broadcastable over x; no host sync."""
    return (t != 0).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


# -- the process ---------------------------------------------------------------------------------------------
class GaussianDiffusion:
    """A discrete Gaussian diffusion with epsilon prediction and learned-range or fixed variance.

    ``betas`` are the betas of the process this object steps through (already respaced);
    ``timestep_map[i]`` is the original timestep of index ``i``, what the network is called with.
    """

    def __init__(self, betas: np.ndarray, learn_sigma: bool = False, fixed_variance: str = "large",
                 timestep_map: list[int] | None = None) -> None:
        if fixed_variance not in FIXED_VARIANCES:
            raise UserError(f"Unknown fixed variance '{fixed_variance}'; use 'large' or 'small'.")
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must be a 1-D array in (0, 1]")
        self.num_timesteps = len(betas)
        self.learn_sigma, self.fixed_variance = learn_sigma, fixed_variance
        self.timestep_map = torch.as_tensor(timestep_map if timestep_map is not None else range(len(betas)),
                                            dtype=torch.long)
        if len(self.timestep_map) != self.num_timesteps:
            raise ValueError("timestep_map must have one entry per beta")

        abar = np.cumprod(1.0 - betas)
        abar_prev = np.append(1.0, abar[:-1])
        posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        # The posterior variance is 0 at t = 0; the reference clips its log with the value at t = 1.
        posterior_log_variance = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
        large_variance = np.append(posterior_variance[1], betas[1:])
        tables = {
            "betas": betas,
            "log_betas": np.log(betas),
            "alphas_cumprod": abar,
            "alphas_cumprod_prev": abar_prev,
            "sqrt_alphas_cumprod": np.sqrt(abar),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / abar),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / abar - 1),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": posterior_log_variance,
            "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),
            "posterior_mean_coef2": (1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar),
            "large_log_variance": np.log(large_variance),
        }
        self.tables = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tables.items()}
        self.tables["timestep_map"] = self.timestep_map
        self._on_device: dict[torch.device, dict[str, torch.Tensor]] = {}

    @classmethod
    def from_schedule(cls, schedule: str, diffusion_steps: int, learn_sigma: bool = False,
                      steps: int | str | None = None, fixed_variance: str = "large") -> "GaussianDiffusion":
        """The process of ``diffusion_steps`` steps of ``schedule``, respaced to ``steps`` (None: all)."""
        spacing = str(diffusion_steps if steps is None else steps)
        if spacing.isdigit() and not 1 <= int(spacing) <= diffusion_steps:
            raise UserError(f"Cannot take {spacing} sampling steps from a process of {diffusion_steps} timesteps.")
        use = space_timesteps(diffusion_steps, spacing)
        # Even unspaced, betas are recomputed from abar as the reference's SpacedDiffusion always does (they
        # differ from the schedule's in the last bit).
        return cls(respaced_betas(named_betas(schedule, diffusion_steps), use), learn_sigma, fixed_variance,
                   timestep_map=use)

    @classmethod
    def from_model_config(cls, model_config: Mapping[str, Any], steps: int | str | None = None,
                          fixed_variance: str | None = None) -> "GaussianDiffusion":
        """The process a ddpm-family network was built for (its ``diffusion_steps``, ``noise_schedule``,
        ``learn_sigma`` and, when it states one, ``fixed_variance``), respaced to ``steps``."""
        try:
            schedule, num = model_config["noise_schedule"], int(model_config["diffusion_steps"])
        except KeyError as exc:
            raise UserError(f"The model config has no {exc}; it is not a ddpm-family (discrete-time) model.") from None
        fixed_variance = fixed_variance or model_config.get("fixed_variance", "large")
        return cls.from_schedule(schedule, num, bool(model_config.get("learn_sigma", False)), steps, fixed_variance)

    # -- coefficients ------------------------------------------------------------------------------------
    def _table(self, name: str, device: torch.device) -> torch.Tensor:
        if device not in self._on_device:
            self._on_device[device] = {k: v.to(device) for k, v in self.tables.items()}
        return self._on_device[device][name]

    def _coef(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Table entries at ``t`` shaped to broadcast over ``like``: fp64 for fp64 states, else fp32 (reference)."""
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        values = self._table(name, like.device)[t].to(dtype)
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    # -- forward process and posterior -------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) for the given noise."""
        return (self._coef("sqrt_alphas_cumprod", t, x0) * x0
                + self._coef("sqrt_one_minus_alphas_cumprod", t, x0) * noise)

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = self._coef("posterior_mean_coef1", t, x_t) * x0 + self._coef("posterior_mean_coef2", t, x_t) * x_t
        return mean, self._coef("posterior_variance", t, x_t), self._coef("posterior_log_variance_clipped", t, x_t)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (self._coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t
                - self._coef("sqrt_recipm1_alphas_cumprod", t, x_t) * eps)

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return ((self._coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0)
                / self._coef("sqrt_recipm1_alphas_cumprod", t, x_t))

    # -- the model's reverse step ------------------------------------------------------------------------
    def model_output(self, model: Callable[..., torch.Tensor], x_t: torch.Tensor, t: torch.Tensor,
                     class_labels: Any = None) -> torch.Tensor:
        """The network at spaced indices ``t``: called with the original timesteps, output in x_t's dtype."""
        out = model(x_t, self._table("timestep_map", x_t.device)[t], class_labels)
        expected = x_t.shape[1] * (2 if self.learn_sigma else 1)
        if out.shape[1] != expected:
            raise ValueError(f"the model outputs {out.shape[1]} channels; this diffusion "
                             f"({'learned' if self.learn_sigma else 'fixed'} variance) needs {expected}")
        return out.to(x_t.dtype)

    def p_mean_variance(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                        clip_denoised: bool = True) -> dict[str, torch.Tensor]:
        """p(x_{t-1} | x_t) from a network output: ``mean``, ``log_variance`` and ``pred_x0``."""
        c = x_t.shape[1]
        if self.learn_sigma:
            eps, v = output.split(c, dim=1)
            frac = (v + 1) / 2  # v in [-1, 1] spans [posterior variance, beta] in log space
            log_variance = (frac * self._coef("log_betas", t, x_t)
                            + (1 - frac) * self._coef("posterior_log_variance_clipped", t, x_t))
        else:
            eps = output
            name = "large_log_variance" if self.fixed_variance == "large" else "posterior_log_variance_clipped"
            log_variance = self._coef(name, t, x_t).expand_as(x_t)
        pred_x0 = self.predict_x0(x_t, t, eps)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1, 1)
        mean, _, _ = self.q_posterior(pred_x0, x_t, t)
        return {"mean": mean, "log_variance": log_variance, "pred_x0": pred_x0}

    def p_sample(self, model: Callable[..., torch.Tensor], x: torch.Tensor, t: torch.Tensor,
                 class_labels: Any = None, noise: torch.Tensor | None = None,
                 clip_denoised: bool = True) -> dict[str, torch.Tensor]:
        """One ancestral step x_t -> x_{t-1} (no noise added where t == 0): ``sample`` and ``pred_x0``."""
        out = self.p_mean_variance(self.model_output(model, x, t, class_labels), x, t, clip_denoised)
        noise = torch.randn_like(x) if noise is None else noise
        sample = out["mean"] + _nonzero(t, x) * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_x0": out["pred_x0"]}

    def ddim_sample(self, model: Callable[..., torch.Tensor], x: torch.Tensor, t: torch.Tensor,
                    class_labels: Any = None, noise: torch.Tensor | None = None, eta: float = 0.0,
                    clip_denoised: bool = True) -> dict[str, torch.Tensor]:
        """One DDIM step (eq. 12 of Song et al.; ``eta=0`` is deterministic): ``sample`` and ``pred_x0``."""
        out = self.p_mean_variance(self.model_output(model, x, t, class_labels), x, t, clip_denoised)
        eps = self.predict_eps(x, t, out["pred_x0"])
        abar, abar_prev = self._coef("alphas_cumprod", t, x), self._coef("alphas_cumprod_prev", t, x)
        sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar)) * torch.sqrt(1 - abar / abar_prev)
        mean = out["pred_x0"] * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev - sigma**2) * eps
        noise = torch.randn_like(x) if noise is None else noise
        return {"sample": mean + _nonzero(t, x) * sigma * noise, "pred_x0": out["pred_x0"]}

    def sample(self, model: Callable[..., torch.Tensor], noise: torch.Tensor, class_labels: Any = None, *,
               sampler: str = "ancestral", eta: float = 0.0, clip_denoised: bool = True,
               randn_like: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like,
               progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Run the reverse process from ``noise`` (x_T) over every index of this process; see the contract."""
        if sampler not in SAMPLERS:
            raise UserError(f"Unknown sampler '{sampler}' for a ddpm-family model; use one of: {', '.join(SAMPLERS)}.")
        x, n = noise, self.num_timesteps
        with torch.no_grad():
            for step, i in enumerate(reversed(range(n))):
                t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
                if sampler == "ancestral":
                    x = self.p_sample(model, x, t, class_labels, randn_like(x), clip_denoised)["sample"]
                else:
                    x = self.ddim_sample(model, x, t, class_labels, randn_like(x), eta, clip_denoised)["sample"]
                if progress is not None:
                    progress(step + 1, n)
        return x

    # -- training ----------------------------------------------------------------------------------------
    def vb_terms_bpd(self, output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The variational bound term at t in bits/dim: KL(q || p) for t > 0, the decoder NLL of x_0 at t = 0."""
        true_mean, _, true_log_variance = self.q_posterior(x0, x_t, t)
        out = self.p_mean_variance(output, x_t, t, clip_denoised=False)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
        return torch.where(t == 0, mean_flat(nll) / math.log(2.0), kl)

    def training_losses(self, model: Callable[..., torch.Tensor], x0: torch.Tensor, t: torch.Tensor,
                        class_labels: Any = None, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-sample losses at indices ``t``: L_simple (``mse``), plus with learned variance the ``vb`` term.

        The hybrid loss is improved-diffusion's RESCALED_MSE: ``vb`` sees the epsilon prediction through a
        stop-gradient (only the variance channels learn from it) and is scaled by ``num_timesteps / 1000``.
        """
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.q_sample(x0, t, noise)
        output = self.model_output(model, x_t, t, class_labels)
        c = x0.shape[1]
        eps = output[:, :c]
        terms = {"mse": mean_flat((noise - eps) ** 2)}
        if self.learn_sigma:
            frozen = torch.cat([eps.detach(), output[:, c:]], dim=1)
            terms["vb"] = self.vb_terms_bpd(frozen, x0, x_t, t) * (self.num_timesteps / 1000.0)
            terms["loss"] = terms["mse"] + terms["vb"]
        else:
            terms["loss"] = terms["mse"]
        return terms
