"""The iddpm network against improved-diffusion's UNetModel: keys, outputs, parameter counts, only-LoRA base."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import loracli
from loracli.models.iddpm import SPEC, IDDPMUNet, attention_sites, timestep_embedding

FIXTURES = Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location("make_iddpm_fixtures", FIXTURES / "make_iddpm_fixtures.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)
UNET = np.load(FIXTURES / "iddpm" / "unet.npz")


def reference_weights(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return fx.fixture_weights({k: tuple(v.shape) for k, v in net.state_dict().items()})


def build(name: str, **changes) -> tuple[IDDPMUNet, tuple]:
    """Our network for a fixture case, with the fixture's weights, and that case's inputs (labels one-hot)."""
    case = fx.MODEL_CASES[name]
    net = IDDPMUNet(**{**fx.our_config(case), **changes}).eval()
    x, t, y = fx.model_inputs(case)
    labels = F.one_hot(y, case["num_classes"]).float() if y is not None else None
    return net, (x, t, labels)


def assert_matches(ours: torch.Tensor, reference: np.ndarray, rel: float = 1e-5) -> None:
    reference = torch.from_numpy(reference)
    assert ours.shape == reference.shape
    err = (ours - reference).abs().max().item()
    assert err <= rel * reference.abs().max().item(), f"max abs error {err:.3g}"


@pytest.mark.parametrize("name", list(fx.MODEL_CASES))
def test_state_dict_keys_and_outputs_equal_the_reference(name):
    net, inputs = build(name)
    assert list(net.state_dict()) == list(UNET[f"{name}__keys"])  # same names, same order
    net.load_state_dict(reference_weights(net))
    with torch.no_grad():
        assert_matches(net(*inputs), UNET[f"{name}__out"])


def test_zero_init_layers_are_the_references():
    net = IDDPMUNet(**fx.our_config(fx.MODEL_CASES["small_cond"]))
    zero = {k for k, v in net.state_dict().items() if v.abs().max() == 0 and not k.endswith(".bias")}
    expected = {k for k in net.state_dict() if k.endswith(("out_layers.3.weight", "proj_out.weight", "out.2.weight"))}
    assert zero == expected


def test_qkv_rows_use_the_legacy_per_head_layout():
    """Reading qkv rows as EDM's interleaved layout (or any other) instead must break the output."""
    net, inputs = build("small_uncond")
    weights = reference_weights(net)
    for key in [k for k in weights if k.endswith("qkv.weight") or k.endswith("qkv.bias")]:
        w = weights[key]
        heads = 4 if key.startswith("input_blocks") or key.startswith("middle") else 2
        shape = (heads, 3, w.shape[0] // (3 * heads)) + tuple(w.shape[1:])
        weights[key] = w.reshape(shape).transpose(1, 2).reshape(w.shape)  # legacy [h, 3, d] -> EDM [h, d, 3]
    net.load_state_dict(weights)
    with torch.no_grad():
        out = net(*inputs)
    reference = torch.from_numpy(UNET["small_uncond__out"])
    assert (out - reference).abs().max() > 100 * 1e-5 * reference.abs().max()


def test_only_lora_base_equals_the_reference_without_its_embedding():
    """scale_shift=False drops time_embed and every emb_layers; a zero emb_layers reference computes the same."""
    net, inputs = build("small_uncond", scale_shift=False)
    keys = set(net.state_dict())
    assert not any(k.startswith("time_embed") or ".emb_layers." in k for k in keys)
    full = {k: v for k, v in reference_weights(IDDPMUNet(**fx.our_config(fx.MODEL_CASES["small_uncond"]))).items()}
    net.load_state_dict({k: v for k, v in full.items() if k in keys})
    with torch.no_grad():
        assert_matches(net(*inputs), UNET["small_uncond__out_without_emb"])


def test_only_lora_class_conditional_base_has_no_label_embedding():
    net = IDDPMUNet(**{**fx.our_config(fx.MODEL_CASES["small_cond"]), "scale_shift": False})
    assert net.label_emb is None and net.time_embed is None
    assert SPEC.tap_name({"scale_shift": False}) is None and SPEC.tap_name({"scale_shift": True}) == "emb_tap"


@pytest.mark.parametrize("preset, label_dim, only_lora, expected", [
    ("cifar10", 0, False, 52_546_438),
    ("cifar10", 10, False, 52_551_558),
    ("cifar10", 0, True, 52_546_438 - 6_960_384 - 328_704),
    ("cifar10", 10, True, 52_546_438 - 6_960_384 - 328_704),
    ("imagenet64", 0, False, 121_063_942),
])
def test_preset_parameter_counts_equal_the_reference(preset, label_dim, only_lora, expected):
    with torch.device("meta"):
        model = loracli.create_model("iddpm", preset=preset, label_dim=label_dim, only_lora=only_lora)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_cifar10_preset_has_fifteen_attention_blocks_at_256_channels():
    with torch.device("meta"):
        net = IDDPMUNet(**SPEC.presets["cifar10"].config)
    sites = attention_sites(net)
    assert len(sites) == 15 and {(s.channels, s.heads) for s in sites} == {(256, 4)}
    assert sites[0].block == "input_blocks.5.1" and sites[-1].proj == "output_blocks.11.1.proj_out"
    assert len(net.state_dict()) == 446
    assert SPEC.presets["cifar10"].sampling == {"sampler": "ancestral", "steps": None}
    assert SPEC.presets["cifar10"].conditions["time-lora"] == {"bases": 11}


def test_embedding_tap_sees_what_the_resblocks_receive():
    """The tapped vector is time MLP + class embedding, exactly the input of every ResBlock's emb_layers."""
    config = {k: v for k, v in fx.our_config(fx.MODEL_CASES["small_cond"]).items() if k != "scale_shift"}
    model = loracli.create_model("iddpm", **config).eval()
    net = model.net
    net.load_state_dict(reference_weights(net))
    model.use_embedding()
    seen = {}
    net.emb_tap.register_forward_hook(lambda m, args, out: seen.update(tap=out))
    net.output_blocks[2][0].emb_layers.register_forward_hook(lambda m, args, out: seen.update(block=args[0]))
    x, t, y = fx.model_inputs(fx.MODEL_CASES["small_cond"])
    with torch.no_grad():
        model(x, t, y)
        expected = net.time_embed(timestep_embedding(t * 0.25, 32)) + net.label_emb.weight[y]
    assert seen["tap"] is seen["block"]
    torch.testing.assert_close(seen["tap"], expected)


def test_soft_class_vectors_mix_the_class_embeddings():
    net, _ = build("small_cond")
    net.load_state_dict(reference_weights(net))
    soft = torch.tensor([[0.25, 0.75] + [0.0] * 8])
    mixed = 0.25 * net.label_emb.weight[0] + 0.75 * net.label_emb.weight[1]
    torch.testing.assert_close(net.label_emb(soft)[0], mixed)


def test_integer_labels_through_the_conditioned_model_equal_one_hot_vectors():
    name = "small_cond"
    model = loracli.create_model("iddpm", **{k: v for k, v in fx.our_config(fx.MODEL_CASES[name]).items()
                                             if k != "scale_shift"}).eval()
    model.net.load_state_dict(reference_weights(model.net))
    x, t, y = fx.model_inputs(fx.MODEL_CASES[name])
    with torch.no_grad():
        assert_matches(model(x, t, y), UNET[f"{name}__out"])
