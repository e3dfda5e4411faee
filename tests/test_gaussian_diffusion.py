"""GaussianDiffusion against improved-diffusion's GaussianDiffusion / SpacedDiffusion (fixture values)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import loracli
from loracli.build import resolve_config
from loracli.diffusion.gaussian import GaussianDiffusion, space_timesteps
from loracli.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location("make_iddpm_fixtures", FIXTURES / "make_iddpm_fixtures.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)
REF = np.load(FIXTURES / "iddpm" / "gaussian.npz")


def diffusion_of(case: dict) -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule(case["noise_schedule"], case["steps"], case["learn_sigma"],
                                           steps=case["respacing"] or None,
                                           fixed_variance="small" if case["sigma_small"] else "large")


def toy_model(case: dict, captured: dict | None = None):
    """The fixture's stand-in network, called as ours are: original t, rescaled inside (t * 1000 / T)."""

    def model(x, t, class_labels):
        out = fx.toy_output(x, t.float() * (1000.0 / case["steps"]), case["learn_sigma"])
        if captured is not None:
            out = out.detach().requires_grad_(True)
            captured["out"] = out
        return out

    return model


def close(ours: torch.Tensor | np.ndarray, key: str, rtol: float = 1e-6) -> None:
    ours = torch.as_tensor(ours)
    ref = torch.from_numpy(REF[key]).to(ours.dtype)
    assert ours.shape == ref.shape, key
    torch.testing.assert_close(ours, ref, rtol=rtol, atol=rtol * max(ref.abs().max().item(), 1e-30), msg=key)


@pytest.mark.parametrize("name", list(fx.DIFFUSION_CASES))
def test_schedule_arrays_equal_the_reference_in_float64(name):
    d = diffusion_of(fx.DIFFUSION_CASES[name])
    np.testing.assert_array_equal(d.timestep_map.numpy(), REF[f"{name}__timestep_map"])
    np.testing.assert_allclose(d.tables["betas"].numpy(), REF[f"{name}__betas"], rtol=1e-12, atol=0)
    np.testing.assert_allclose(d.tables["alphas_cumprod"].numpy(), REF[f"{name}__alphas_cumprod"], rtol=1e-12, atol=0)
    probe = fx.probe_indices(d.num_timesteps)
    for key in ("posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"):
        np.testing.assert_allclose(d.tables[key].numpy()[probe], REF[f"{name}__{key}"], rtol=1e-12, atol=1e-300)


def test_cosine_schedule_closed_form():
    """beta_i = 1 - abar((i+1)/T)/abar(i/T) with abar(u) = cos((u+0.008)/1.008 pi/2)^2, capped at 0.999."""
    d = GaussianDiffusion.from_schedule("cosine", 4000)
    abar = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for i in (0, 1, 2000):
        assert d.tables["betas"][i].item() == pytest.approx(1 - abar((i + 1) / 4000) / abar(i / 4000), rel=1e-12)
    assert d.tables["betas"][-1].item() == 0.999


@pytest.mark.parametrize("steps, spacing", [(4000, "250"), (300, "10,15,20"), (1000, "ddim50"), (1000, "ddim8"),
                                            (4000, "7")])
def test_space_timesteps_equal_the_reference(steps, spacing):
    assert space_timesteps(steps, spacing) == list(REF[f"space__{steps}__{spacing}"])


@pytest.mark.parametrize("steps, spacing", [(10, "ddim6"), (100, "0"), (100, "fast"), (30, "20,20"), (4000, "ddim")])
def test_impossible_respacing_is_a_user_error(steps, spacing):
    with pytest.raises(UserError):
        GaussianDiffusion.from_schedule("cosine", steps, steps=spacing)


def test_more_steps_than_timesteps_is_a_user_error():
    with pytest.raises(UserError, match="Cannot take 5000 sampling steps"):
        GaussianDiffusion.from_schedule("cosine", 4000, steps=5000)


@pytest.mark.parametrize("name", list(fx.DIFFUSION_CASES))
def test_forward_process_and_posterior_equal_the_reference(name):
    d = diffusion_of(fx.DIFFUSION_CASES[name])
    inputs = fx.diffusion_inputs(d.num_timesteps)
    x_t = d.q_sample(inputs["x0"], inputs["t"], inputs["noise"])
    close(x_t, f"{name}__x_t")
    mean, var, logvar = d.q_posterior(inputs["x0"], x_t, inputs["t"])
    close(mean, f"{name}__posterior_mean")
    close(var.expand_as(x_t), f"{name}__posterior_variance_t")
    close(logvar.expand_as(x_t), f"{name}__posterior_log_variance_t")


@pytest.mark.parametrize("name", list(fx.DIFFUSION_CASES))
def test_training_losses_and_their_gradient_equal_the_reference(name):
    """Hybrid loss (mse + vb * T/1000, decoder NLL at t=0) with learned variance; L_simple otherwise."""
    case = fx.DIFFUSION_CASES[name]
    d = diffusion_of(case)
    inputs = fx.diffusion_inputs(d.num_timesteps)
    captured = {}
    terms = d.training_losses(toy_model(case, captured), inputs["x0"], inputs["t"], noise=inputs["noise"])
    assert set(terms) == ({"loss", "mse", "vb"} if case["learn_sigma"] else {"loss", "mse"})
    for key, value in terms.items():
        close(value.detach(), f"{name}__terms_{key}", rtol=2e-6)
    terms["loss"].sum().backward()
    close(captured["out"].grad, f"{name}__loss_grad", rtol=2e-6)


def test_vb_term_does_not_train_the_epsilon_channels():
    """The stop-gradient: d(vb)/d(eps) = 0, so the epsilon channels get the gradient of L_simple alone."""
    case = fx.DIFFUSION_CASES["cos4000_learned"]
    d = diffusion_of(case)
    inputs = fx.diffusion_inputs(d.num_timesteps)
    captured = {}
    terms = d.training_losses(toy_model(case, captured), inputs["x0"], inputs["t"], noise=inputs["noise"])
    terms["vb"].sum().backward()
    grad = captured["out"].grad
    assert grad[:, :3].abs().max() == 0 and grad[:, 3:].abs().max() > 0


@pytest.mark.parametrize("name", list(fx.DIFFUSION_CASES))
def test_single_ancestral_and_ddim_steps_equal_the_reference(name):
    case = fx.DIFFUSION_CASES[name]
    d = diffusion_of(case)
    inputs = fx.diffusion_inputs(d.num_timesteps)
    x_t = torch.from_numpy(REF[f"{name}__x_t"])
    t, noise = inputs["t"], inputs["step_noise"]
    out = d.p_sample(toy_model(case), x_t, t, noise=noise)
    close(out["sample"], f"{name}__p_sample")
    close(out["pred_x0"], f"{name}__p_sample_x0")
    close(d.p_sample(toy_model(case), x_t, t, noise=noise, clip_denoised=False)["sample"], f"{name}__p_sample_noclip")
    for eta in (0.0, 0.5):
        close(d.ddim_sample(toy_model(case), x_t, t, noise=noise, eta=eta)["sample"], f"{name}__ddim_eta{eta}")


@pytest.mark.parametrize("name", list(fx.LOOP_CASES))
def test_sampling_loops_equal_the_reference(name):
    """Respaced loops (ancestral "10" of T=4000, DDIM eta 0.5 "ddim8" of T=1000) with scripted noise."""
    case = fx.LOOP_CASES[name]
    d = diffusion_of(case)
    noise = fx.loop_noise(d.num_timesteps)
    queue = list(noise["noises"])
    calls, seen_t = [], []

    def model(x, t, class_labels):
        seen_t.append(int(t[0]))
        return toy_model(case)(x, t, class_labels)

    final = d.sample(model, noise["x_T"], sampler=case["sampler"], eta=case["eta"],
                     randn_like=lambda x: queue.pop(0), progress=lambda i, n: calls.append((i, n)))
    close(final, f"{name}__final", rtol=1e-5)
    assert not queue  # one fresh noise per step, drawn through randn_like
    assert calls == [(i, d.num_timesteps) for i in range(1, d.num_timesteps + 1)]
    assert seen_t == sorted(d.timestep_map.tolist(), reverse=True)  # original timesteps reach the network


def test_fixed_large_variance_uses_the_first_posterior_variance_at_t0():
    d = GaussianDiffusion.from_schedule("linear", 1000)
    x = torch.zeros(2, 3, 4, 4)
    t = torch.tensor([0, 5])
    logvar = d.p_mean_variance(torch.zeros_like(x), x, t)["log_variance"][:, 0, 0, 0].double()
    expected = torch.tensor([d.tables["posterior_variance"][1], d.tables["betas"][5]]).log()
    torch.testing.assert_close(logvar, expected, rtol=1e-6, atol=0)


def test_nano_config_gives_a_fixed_variance_cosine_process():
    model = loracli.create_model("nano", model_channels=8, channel_mult=[1], attn_resolutions=[], img_resolution=8)
    d = GaussianDiffusion.from_model_config(model.config["model_config"], steps="ddim10")
    assert d.num_timesteps == 10 and not d.learn_sigma
    assert d.timestep_map.tolist() == list(range(0, 1000, 100))
    reference = GaussianDiffusion.from_schedule("cosine", 1000)
    torch.testing.assert_close(d.tables["alphas_cumprod"], reference.tables["alphas_cumprod"][d.timestep_map],
                               rtol=1e-12, atol=0)
    x = torch.randn(2, 3, 8, 8)
    losses = d.training_losses(model, x, torch.tensor([0, 9]))
    assert set(losses) == {"loss", "mse"} and losses["loss"].shape == (2,)
    with torch.no_grad():
        out = d.sample(model.eval(), torch.randn(2, 3, 8, 8), sampler="ddim")
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()


def test_iddpm_config_gives_the_papers_process():
    d = GaussianDiffusion.from_model_config(resolve_config("iddpm", preset="cifar10")["model_config"])
    assert d.num_timesteps == 4000 and d.learn_sigma
    np.testing.assert_array_equal(d.tables["betas"].numpy(), REF["cos4000_learned__betas"])


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="noise schedule 'quadratic'"):
        GaussianDiffusion.from_schedule("quadratic", 10)
    with pytest.raises(UserError, match="not a ddpm-family"):
        GaussianDiffusion.from_model_config({"sigma_min": 0.002})
    with pytest.raises(UserError, match="Unknown sampler 'heun'"):
        GaussianDiffusion.from_schedule("linear", 100).sample(lambda x, t, y: x, torch.zeros(1, 3, 2, 2),
                                                              sampler="heun")


def test_a_model_with_the_wrong_output_channels_is_refused():
    d = GaussianDiffusion.from_schedule("linear", 100, learn_sigma=True)
    with pytest.raises(ValueError, match="outputs 3 channels"):
        d.training_losses(lambda x, t, y: x, torch.zeros(1, 3, 2, 2), torch.tensor([3]))


def test_model_config_may_state_its_fixed_variance_and_an_explicit_one_wins():
    config = {"diffusion_steps": 100, "noise_schedule": "linear"}
    assert GaussianDiffusion.from_model_config(config).fixed_variance == "large"
    assert GaussianDiffusion.from_model_config({**config, "fixed_variance": "small"}).fixed_variance == "small"
    assert GaussianDiffusion.from_model_config({**config, "fixed_variance": "small"}, fixed_variance="large"
                                               ).fixed_variance == "large"
