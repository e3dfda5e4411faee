"""Initialisation by name: arms of one seed share every common tensor, whatever layers they add or remove."""

from __future__ import annotations

import pytest
import torch

import loracli
from loracli import registry
from loracli.build import add_conditions, build_model, resolve_config, seeding_name
from loracli.nn import Conv2d, Linear, reseed_by_name, unseeded_modules, zero_init
from loracli.nn.init import module_seed

SMALL = {  # small networks, the same code paths as the presets
    "edm": dict(preset="cifar10", img_resolution=16, model_channels=16, channel_mult=[1, 2], num_blocks=1,
                attn_resolutions=[8]),
    "iddpm": dict(preset="cifar10", img_resolution=16, model_channels=32, channel_mult=[1, 2], num_res_blocks=1,
                  attn_resolutions=[8]),
    "nano": dict(img_resolution=16, model_channels=8, channel_mult=[1, 2], attn_resolutions=[8], channels_per_head=8),
}
ARMS = {"baseline": dict(cond="none"), "with-lora": dict(cond="uc-lora"),
        "only-lora": dict(cond="uc-lora", only_lora=True), "no-cond": dict(cond="none", only_lora=True)}


def arm(name: str, seed: int, **settings) -> torch.nn.Module:
    config = resolve_config("edm", label_dim=10, **{**SMALL["edm"], **settings})
    return build_model(config, seed=seed)


def by_seeding_name(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {seeding_name(k): v for k, v in model.state_dict().items()}


def test_the_four_arms_of_one_seed_share_every_common_tensor():
    tensors = {name: by_seeding_name(arm(name, 7, **settings)) for name, settings in ARMS.items()}
    base = tensors["baseline"]
    for name, other in tensors.items():
        common = base.keys() & other.keys()
        assert len(common) > 0.5 * len(base), name
        assert all(torch.equal(base[k], other[k]) for k in common), name
    # Only the scale-and-shift layers are missing without them; the adapters are extra, not renamed tensors.
    assert base.keys() - tensors["only-lora"].keys() and tensors["with-lora"].keys() >= base.keys()
    # A random tensor after every removed layer: without seeding by name it would differ between the arms.
    key = "net.model.dec.16x16_block1.conv0.weight"
    assert not torch.equal(base[key], arm("baseline", 8, **ARMS["baseline"]).state_dict()[key])


def test_seeded_builds_are_deterministic_and_independent_of_the_thread_count():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = arm("with-lora", 3, **ARMS["with-lora"]).state_dict()
        torch.set_num_threads(2)
        torch.manual_seed(123)  # the global generator plays no part
        two = arm("with-lora", 3, **ARMS["with-lora"]).state_dict()
    finally:
        torch.set_num_threads(threads)
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


def test_a_module_is_drawn_as_its_constructor_draws_from_its_name_seed():
    """The re-draw keeps the reference distributions exactly: it is the constructor's draw, reseeded."""
    root = torch.nn.Module()
    root.fc = Linear(32, 16, init_mode="xavier_uniform", init_bias=0.5)
    root.conv = zero_init(Conv2d(4, 8, 3))
    root.block = zero_init(torch.nn.Sequential(torch.nn.Linear(4, 4)))  # a zeroed container stays zero
    root.plain = torch.nn.Linear(8, 4)
    generator_state = torch.get_rng_state()
    reseed_by_name(root, 11)
    assert torch.equal(torch.get_rng_state(), generator_state)
    torch.manual_seed(module_seed(11, "fc"))
    ref = Linear(32, 16, init_mode="xavier_uniform", init_bias=0.5)
    assert torch.equal(root.fc.weight, ref.weight) and torch.equal(root.fc.bias, ref.bias)
    torch.manual_seed(module_seed(11, "plain"))
    ref_plain = torch.nn.Linear(8, 4)
    assert torch.equal(root.plain.weight, ref_plain.weight)
    assert not root.conv.weight.any() and not root.conv.bias.any() and not root.block[0].weight.any()


def test_drop_in_adapters_are_drawn_by_name():
    base = arm("baseline", 1, **ARMS["baseline"])
    first = add_conditions(base, "uc-lora", seed=4)
    down = {k: v.clone() for k, v in first.state_dict().items() if k.endswith(".down")}
    torch.manual_seed(99)
    again = add_conditions(arm("baseline", 1, **ARMS["baseline"]), "uc-lora", seed=4).state_dict()
    assert down and all(torch.equal(v, again[k]) for k, v in down.items())
    # The base network is not re-drawn: it keeps the (pretrained) weights it had.
    key = "net.model.enc.16x16_conv.weight"
    assert torch.equal(again[key], arm("baseline", 1, **ARMS["baseline"]).state_dict()[key])


def _applicable(model: str) -> list[str]:
    family = registry.get_model(model).family
    return [n for n, r in registry.conditions().items() if n != "none" and family in r.spec.families]


@pytest.mark.parametrize("model", sorted(registry.models()))
def test_every_registered_network_and_variant_can_be_seeded_by_name(model):
    """Every module owning parameters re-draws them (``reset_parameters``); built on the meta device (no data)."""
    for cond in ["none", *_applicable(model)]:
        with torch.device("meta"):
            built = loracli.create_model(model, cond=cond, label_dim=10)
        assert unseeded_modules(built) == [], (model, cond)


@pytest.mark.parametrize("model", sorted(registry.models()))
def test_seeding_by_name_keeps_every_tensor_distribution(model):
    """A model whose constructor re-initialises its children (e.g. a parent that re-draws its Linears) would get
    their default initialisation back from ``reset_parameters``; compare with the plain build, tensor by tensor:
    deterministic tensors must be equal, random ones of the same scale. Class-conditional (10 classes), which
    every model takes and some (DiT) require."""
    torch.manual_seed(0)
    plain = loracli.create_model(model, label_dim=10).state_dict()
    torch.manual_seed(1)
    other = loracli.create_model(model, label_dim=10).state_dict()
    seeded = build_model(resolve_config(model, label_dim=10), seed=0).state_dict()
    assert plain.keys() == seeded.keys()
    for key, tensor in plain.items():
        if torch.equal(tensor, other[key]):  # not random: the re-draw must give it exactly
            assert torch.equal(seeded[key], tensor), key
        elif tensor.numel() >= 256 and tensor.is_floating_point():
            ratio = (seeded[key].float().std() / tensor.float().std()).item()
            assert 0.8 < ratio < 1.25, (key, ratio)
