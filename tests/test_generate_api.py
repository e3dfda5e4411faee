"""The generation library: seed-exact images at any batch size, class handling, sampler choice and errors,
and how seeds are dealt to torchrun ranks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import loracli
from loracli.errors import UserError
from loracli.generate import choose_sampler, class_table, generate, shard_indices

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def nano():
    torch.manual_seed(0)
    return loracli.create_model("nano", model_channels=8, channel_mult=(1, 2), img_resolution=8, label_dim=3,
                                channels_per_head=8, attn_resolutions=(4,), diffusion_steps=20, learn_sigma=True)


@pytest.fixture(scope="module")
def gaussian():
    """The closed-form denoiser of the reference fixtures (class-dependent Gaussian data), label_dim 4."""
    spec = importlib.util.spec_from_file_location("fx", FIXTURES / "make_sampling_fixtures.py")
    fx = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fx)
    pattern = np.load(FIXTURES / "sampling" / "edm_analytic.npz")["pattern"]
    net = fx.GaussianDenoiser(pattern * 0.5, 4, 0.1, 80.0, 1e-9)  # small enough that nothing clips at 0 or 255
    net.family = "edm"
    return net


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_ddpm_images_depend_on_their_seed_only(nano, sampler):
    seeds = [5, 3, 2**32 + 3, 9]
    whole = loracli.sample(nano, seeds, sampler=sampler, steps=4, batch=4)
    assert whole.dtype == torch.uint8 and whole.shape == (4, 3, 8, 8) and whole.device.type == "cpu"
    one_by_one = loracli.sample(nano, seeds, sampler=sampler, steps=4, batch=1)
    assert torch.equal(whole, one_by_one)
    assert torch.equal(whole[1], whole[2])  # seeds are taken modulo 2**32, as EDM does
    assert torch.equal(loracli.sample(nano, [9], sampler=sampler, steps=4)[0], whole[3])
    assert not torch.equal(whole[0], whole[1])


def test_ancestral_and_ddim_differ_and_eta_adds_noise(nano):
    ancestral = loracli.sample(nano, range(3), sampler="ancestral", steps=4)
    ddim = loracli.sample(nano, range(3), sampler="ddim", steps=4)
    noisy_ddim = loracli.sample(nano, range(3), sampler="ddim", steps=4, eta=1.0)
    assert not torch.equal(ancestral, ddim) and not torch.equal(ddim, noisy_ddim)


def counting(net):
    calls = []
    original = net.forward

    def forward(x, t, *args, **kwargs):
        calls.append(t[0].item())
        return original(x, t, *args, **kwargs)

    net.forward = forward
    return calls


@pytest.mark.parametrize("steps, expected", [(20, list(range(19, -1, -1))), (4, None)])
def test_ddpm_step_counts_and_original_timesteps(nano, steps, expected):
    calls = counting(nano)
    try:
        loracli.sample(nano, [0], sampler="ancestral", steps=steps)
    finally:
        del nano.forward
    assert len(calls) == steps
    if expected is not None:
        assert calls == expected  # the whole chain, T-1 .. 0, in original timesteps
    else:
        assert calls[0] > calls[-1] == 0 and all(0 <= t < 20 for t in calls)


def test_preset_defaults_and_overrides(nano):
    assert choose_sampler(nano).describe() == {"sampler": "ancestral", "steps": 100}  # nano's preset
    assert choose_sampler(nano, "ancestral", 7).describe() == {"sampler": "ancestral", "steps": 7}
    assert choose_sampler(nano).evaluations(nano) == 100
    assert choose_sampler(nano, "ddim").evaluations(nano) == 100  # the preset's steps apply to any sampler


def test_edm_defaults_are_18_heun_steps(gaussian):
    choice = choose_sampler(gaussian)
    assert (choice.name, choice.steps, choice.evaluations(gaussian)) == ("heun", 18, 35)


@pytest.mark.parametrize("kwargs, message", [
    ({"sampler": "heun"}, "does not fit this ddpm-family model"),
    ({"S_churn": 1.0}, "do not apply to a ddpm-family model"),
    ({"sampler": "ancestral", "eta": 0.5}, "does not apply to the ancestral sampler"),
    ({"steps": 0}, "at least 1"),
])
def test_sampler_mistakes_are_user_errors(nano, kwargs, message):
    with pytest.raises(UserError, match=message):
        choose_sampler(nano, **kwargs)


def test_edm_sampler_options_are_checked(gaussian):
    with pytest.raises(UserError, match="does not fit this edm-family model"):
        choose_sampler(gaussian, "ddim")
    with pytest.raises(UserError, match="eta"):
        choose_sampler(gaussian, eta=0.0)


@pytest.mark.parametrize("labels, message", [
    (5, "out of range; this model has classes 0..3"),
    ({1: 0.5, 4: 0.5}, "out of range"),
    ([0, 1], "one per seed \\(3\\)"),
    (torch.ones(2, 4), "shape"),
])
def test_class_mistakes_are_user_errors(labels, message):
    with pytest.raises(UserError, match=message):
        class_table(labels, 4, 3)


def test_classes_on_an_unconditional_model_are_refused():
    with pytest.raises(UserError, match="unconditional"):
        class_table(3, 0, 2)


def test_class_forms():
    assert torch.equal(class_table(2, 4, 3), torch.tensor([0.0, 0, 1, 0]))
    assert torch.equal(class_table({3: 1.5}, 4, 3), torch.tensor([0.0, 0, 0, 1.5]))  # extrapolation
    assert torch.equal(class_table({0: 0.25, 2: 0.5}, 4, 3), torch.tensor([0.25, 0, 0.5, 0]))  # need not sum to 1
    assert torch.equal(class_table([1, 0, 3], 4, 3).argmax(1), torch.tensor([1, 0, 3]))
    assert class_table(None, 4, 3) is None


def as_float(images: torch.Tensor) -> torch.Tensor:
    return images.double()


def test_soft_classes_interpolate_between_classes(gaussian):
    """The Gaussian denoiser is linear in the class vector, so the deterministic sampler is too: the image of
    the mix 0.5/0.5 is the mean of the two classes' images (up to uint8 truncation)."""
    seeds = [0, 1, 2]
    a = loracli.sample(gaussian, seeds, class_labels=1, steps=8)
    b = loracli.sample(gaussian, seeds, class_labels=3, steps=8)
    mix = loracli.sample(gaussian, seeds, class_labels={1: 0.5, 3: 0.5}, steps=8)
    assert (as_float(mix) - (as_float(a) + as_float(b)) / 2).abs().max() <= 1
    assert not torch.equal(a, b)
    vector = torch.tensor([0.0, 0.0, 0.0, 1.5])
    assert torch.equal(loracli.sample(gaussian, seeds, class_labels={3: 1.5}, steps=8),
                      loracli.sample(gaussian, seeds, class_labels=vector, steps=8))


def test_random_classes_come_from_each_seed(gaussian):
    seeds = [4, 8, 15, 16, 23, 42]
    batched = list(generate(gaussian, seeds, steps=4, batch=4))
    labels = torch.cat([b.labels for b in batched])
    assert torch.equal(labels.sum(1), torch.ones(6)) and len(labels.argmax(1).unique()) > 1
    single = torch.cat([next(generate(gaussian, [s], steps=4)).labels for s in seeds])
    assert torch.equal(labels, single)
    # A given class replaces the drawn one but the draw still happens, so the images equal those of a
    # per-seed list of the same class.
    fixed = loracli.sample(gaussian, seeds, class_labels=2, steps=4)
    assert torch.equal(fixed, loracli.sample(gaussian, seeds, class_labels=[2] * 6, steps=4))


def test_precision_and_device_choices(gaussian):
    with pytest.raises(UserError, match="precision"):
        loracli.sample(gaussian, [0], precision="fp16")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            loracli.sample(gaussian, [0], device="cuda")


def test_training_mode_is_restored(nano):
    nano.train()
    loracli.sample(nano, [0], steps=2)
    assert nano.training
    nano.eval()


@pytest.mark.parametrize("num, batch, world", [(10, 3, 2), (7, 64, 4), (100, 8, 3), (1, 4, 2)])
def test_seeds_are_dealt_to_ranks_once_each_in_batches_as_edm(num, batch, world):
    shares = [shard_indices(num, batch, rank, world) for rank in range(world)]
    assert sorted(i for share in shares for i in share) == list(range(num))
    # EDM: ceil(num / (batch * world)) * world contiguous batches, dealt round-robin.
    num_batches = ((num - 1) // (batch * world) + 1) * world
    batches = np.array_split(np.arange(num), num_batches)
    assert shares[0] == [int(i) for b in batches[0::world] for i in b]
    assert shard_indices(num, batch, 0, 1) == list(range(num))
