"""loracli's samplers on a converted network give diffusers' DDPMScheduler / DDIMScheduler loops' images.

Alignment of the randomness: both draw the starting noise first, then one Gaussian per step from the same
generator; diffusers' DDPM step draws none at the last step (t = 0) and loracli draws one it multiplies by 0,
so a shared generator gives both the same noise at every step that uses it. Step spacing: loracli's
``ddimN`` respacing visits diffusers' default ``leading`` timesteps, loracli's plain ``N`` its ``linspace``
ones. Tolerance: diffusers computes its schedule in float32, loracli in float64 (as improved-diffusion), so
images agree to about 1e-5, not bit for bit. DDIM: loracli re-derives epsilon from the clipped x_0 prediction (improved-diffusion's DDIM), which is
diffusers' ``use_clipped_model_output=True``.
"""

from __future__ import annotations

import pytest

pytest.importorskip("diffusers", reason="needs diffusers and loracli-diffusers: pip install -e plugins/loracli-diffusers")
pytest.importorskip("loracli_diffusers", reason="needs loracli-diffusers: pip install -e plugins/loracli-diffusers")
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

import loracli
from loracli.diffusion.gaussian import GaussianDiffusion
from loracli.testing import perturb
from loracli_diffusers.unet import TINY_UNET

STEPS = 8


@pytest.fixture(scope="module")
def networks():
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, **TINY_UNET).eval()
    perturb(unet.parameters(), scale=0.05)
    model = loracli.create_model("diffusers-unet", img_resolution=16).eval()
    model.net.unet.load_state_dict(unet.state_dict())
    return unet, loracli.build.add_conditions(model, "time-lora")  # fresh adapters: still the same network
    return unet, model


def diffusers_loop(unet, scheduler, noise, generator, **step_options):
    x = noise
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, generator=generator, **step_options).prev_sample
    return x


def loracli_loop(model, steps, sampler, noise, generator, **options):
    config = model.config["model_config"]
    diffusion = GaussianDiffusion.from_model_config(config, steps=steps)
    return diffusion.sample(model, noise, sampler=sampler, randn_like=lambda x: torch.randn(x.shape, generator=generator),
                            **options)


@pytest.mark.parametrize("variance, spacing, steps", [("fixed_small", "leading", f"ddim{STEPS}"),
                                                      ("fixed_large", "linspace", str(STEPS))])
def test_ancestral_sampler_gives_ddpm_scheduler_images(networks, variance, spacing, steps):
    unet, model = networks
    scheduler = DDPMScheduler(variance_type=variance, timestep_spacing=spacing)
    scheduler.set_timesteps(STEPS)
    model.config["model_config"]["fixed_variance"] = variance.split("_")[1]
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    expected = diffusers_loop(unet, scheduler, noise, torch.Generator().manual_seed(6))
    got = loracli_loop(model, steps, "ancestral", noise, torch.Generator().manual_seed(6))
    torch.testing.assert_close(got, expected, rtol=0, atol=5e-5)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_sampler_gives_ddim_scheduler_images(networks, eta):
    unet, model = networks
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(STEPS)
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    expected = diffusers_loop(unet, scheduler, noise, torch.Generator().manual_seed(8), eta=eta,
                              use_clipped_model_output=True)
    got = loracli_loop(model, f"ddim{STEPS}", "ddim", noise, torch.Generator().manual_seed(8), eta=eta)
    torch.testing.assert_close(got, expected, rtol=0, atol=5e-5)
