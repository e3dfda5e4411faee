"""Test helpers and mixins for loracli and its plugins (in the spirit of diffusers' shared model tests).

A plugin author subclasses a mixin in a ``Test*`` class and sets a few attributes; pytest then runs the
contract checks every model or conditioning variant must pass::

    from loracli.testing import ConditionTesterMixin

    class TestMyCondition(ConditionTesterMixin):
        condition = "my-cond"          # the name registered in ``loracli.conditions``
        model = "nano"                 # any registered model the variant supports
        model_kwargs = {"model_channels": 16, "channel_mult": [1, 2], "channels_per_head": 16}

The mixins are not collected by themselves (their names do not start with ``Test``). The helpers
(:func:`example_inputs`, :func:`perturb`, :func:`assert_bit_equal`) work on any ``ConditionedModel``.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

import pytest
import torch
from torch import nn

from loracli import registry
from loracli.build import add_conditions, create_model
from loracli.conditioning.variants import diffusion_steps
from loracli.errors import UserError

TINY_NANO = {"model_channels": 16, "channel_mult": [1, 2], "channels_per_head": 16}


def example_inputs(model: Any, batch: int = 2, seed: int = 0, image_shape: tuple[int, int, int] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A reproducible ``(x, noise_level, class_labels)`` for a model's family and configuration.

    ddpm: integer timesteps spread over ``0..T-1``; edm: log-normal σ as in EDM's training. Class labels are
    one-hot vectors of distinct classes when the model is class-conditional, else None. ``image_shape``
    defaults to the config's ``img_channels`` and ``img_resolution``.
    """
    g = torch.Generator().manual_seed(seed)
    config = model.config["model_config"]
    c, h, w = image_shape or (config.get("img_channels", 3), config.get("img_resolution", 32),
                              config.get("img_resolution", 32))
    x = torch.randn(batch, c, h, w, generator=g)
    if model.family == "ddpm":
        noise_level = torch.randint(0, diffusion_steps(model), (batch,), generator=g)
    else:
        noise_level = (torch.randn(batch, generator=g) * 1.2 - 1.2).exp()
    labels = None
    if model.label_dim:
        labels = nn.functional.one_hot(torch.arange(batch) % model.label_dim, model.label_dim).float()
    return x, noise_level, labels


@torch.no_grad()
def perturb(parameters: Iterable[nn.Parameter], scale: float = 0.05, seed: int = 0) -> None:
    """Add Gaussian noise to parameters, so zero-initialised layers (outputs, LoRA ``up``) stop hiding bugs."""
    g = torch.Generator().manual_seed(seed)
    for p in parameters:
        p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def assert_bit_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    """Exact equality with a readable failure (largest difference)."""
    assert a.shape == b.shape, f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    if not torch.equal(a, b):
        raise AssertionError(f"outputs differ, max |difference| {(a - b).abs().max().item():.3e}")


def parameter_count(parameters: Iterable[nn.Parameter]) -> int:
    return sum(p.numel() for p in parameters)


def applicable_conditions(model: Any) -> list[str]:
    """Every registered conditioning variant (not 'none') that this built model can take."""
    names = []
    for name in sorted(registry.conditions()):
        if name == "none" or name in model.config["cond"]:
            continue
        try:
            add_conditions(copy.deepcopy(model), name)
        except UserError:
            continue
        names.append(name)
    return names


class _Builds:
    """What both mixins share: a model name, tiny builder settings and how to build and call it."""

    model: str = "nano"
    preset: str | None = None
    model_kwargs: dict[str, Any] = TINY_NANO
    label_dim: int = 0
    only_lora: bool = False
    image_shape: tuple[int, int, int] | None = None

    def build(self, cond: Any = "none", seed: int = 0, only_lora: bool | None = None, **overrides: Any) -> Any:
        torch.manual_seed(seed)
        only_lora = self.only_lora if only_lora is None else only_lora
        return create_model(self.model, preset=self.preset, cond=cond, only_lora=only_lora,
                            label_dim=self.label_dim, **{**self.model_kwargs, **overrides}).eval()

    def inputs(self, model: Any, batch: int = 2, seed: int = 0) -> tuple:
        return example_inputs(model, batch, seed, self.image_shape)


class ConditionTesterMixin(_Builds):
    """The contract of a conditioning variant: drop-in at zero, a clean parameter split, gradients, round trip.

    Set ``condition`` (a registered name, ``+`` combinations allowed) and, if it needs them, ``model``,
    ``model_kwargs``, ``label_dim`` (>0 for class-dependent variants) and ``only_lora``.
    """

    condition: str = ""

    def conditioned(self, seed: int = 0) -> tuple[Any, Any]:
        """``(base, wrapped)``: a base model with perturbed weights, and a copy with the condition added."""
        base = self.build(seed=seed)
        perturb(base.parameters(), seed=seed)
        return base, add_conditions(copy.deepcopy(base), self.condition)

    def test_fresh_condition_computes_the_base_network_exactly(self):
        base, wrapped = self.conditioned()
        x, noise, labels = self.inputs(base)
        with torch.no_grad():
            assert_bit_equal(wrapped(x, noise, labels), base(x, noise, labels))

    def test_condition_parameters_are_exactly_the_added_ones(self):
        base, wrapped = self.conditioned()
        base_ids = {id(p) for p in wrapped.base_parameters()}
        cond_ids = {id(p) for p in wrapped.condition_parameters()}
        assert cond_ids and not base_ids & cond_ids
        assert base_ids | cond_ids == {id(p) for p in wrapped.parameters()}
        assert parameter_count(wrapped.base_parameters()) == parameter_count(base.parameters())

    def test_gradients_reach_condition_and_base_parameters(self):
        _, wrapped = self.conditioned()
        perturb(wrapped.condition_parameters(), seed=1)
        x, noise, labels = self.inputs(wrapped)
        wrapped.train()
        wrapped(x, noise, labels).square().mean().backward()
        for name, p in wrapped.named_parameters():
            if any(p is q for q in wrapped.condition_parameters()):
                assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in wrapped.base_parameters())

    def test_checkpoint_round_trip_rebuilds_the_same_network(self, tmp_path):
        from loracli.io.checkpoint import load, save

        _, wrapped = self.conditioned()
        perturb(wrapped.condition_parameters(), seed=2)
        loaded = load(save(wrapped, tmp_path / "ckpt.safetensors"))
        x, noise, labels = self.inputs(wrapped)
        with torch.no_grad():
            assert_bit_equal(loaded(x, noise, labels), wrapped(x, noise, labels))

    def test_meta_device_build_has_the_same_parameters(self):
        real = self.build(cond=self.condition)
        with torch.device("meta"):
            meta = self.build(cond=self.condition)
        assert [(n, p.shape) for n, p in meta.named_parameters()] == [(n, p.shape) for n, p in real.named_parameters()]


class ModelTesterMixin(_Builds):
    """The contract of a base model: family call, declared attention sites and embedding, drop-in variants.

    Set ``model``, ``model_kwargs`` (tiny) and optionally ``label_dim``, ``image_shape``.
    """

    def test_forward_keeps_batch_and_image_size(self):
        net = self.build()
        x, noise, labels = self.inputs(net)
        with torch.no_grad():
            out = net(x, noise, labels)
        assert out.shape[0] == x.shape[0] and out.shape[2:] == x.shape[2:]
        assert out.shape[1] % x.shape[1] == 0

    def test_attention_sites_name_existing_one_by_one_projections(self):
        from loracli.conditioning.lora import projection_features

        net = self.build()
        sites = net.attention_sites()
        assert sites, "a model for attention conditioning must declare at least one attention site"
        for site in sites:
            net.net.get_submodule(site.norm)
            widths = [projection_features(net.net.get_submodule(name)) for name in site.qkv_names]
            assert all(d_in == site.channels for d_in, _ in widths)
            assert sum(d_out for _, d_out in widths) == 3 * site.channels
            assert projection_features(net.net.get_submodule(site.proj)) == (site.channels, site.channels)
            assert site.channels % site.heads == 0

    def test_embedding_tap_carries_the_declared_width(self):
        net = self.build()
        tap = net.spec.tap_name(net.config["model_config"])
        if tap is None:
            pytest.skip("this configuration has no conditioning embedding")
        assert isinstance(net.net.get_submodule(tap), nn.Identity)
        net.use_embedding()
        seen: list[torch.Tensor] = []
        net.net.get_submodule(tap).register_forward_hook(lambda m, i, o: seen.append(o))
        with torch.no_grad():
            net(*self.inputs(net))
        assert seen and seen[0].shape[-1] == net.embedding_channels()

    def test_only_lora_base_drops_scale_and_shift(self):
        full, bare = self.build(only_lora=False), self.build(only_lora=True)
        assert parameter_count(bare.parameters()) < parameter_count(full.parameters())

    def test_every_applicable_variant_starts_as_the_base_network(self):
        base = self.build()
        perturb(base.parameters())
        names = applicable_conditions(base)
        assert names, "no registered conditioning variant applies to this model"
        x, noise, labels = self.inputs(base)
        with torch.no_grad():
            expected = base(x, noise, labels)
            for cond in [*names, "+".join(names)]:
                assert_bit_equal(add_conditions(copy.deepcopy(base), cond)(x, noise, labels), expected)
