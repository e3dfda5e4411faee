"""diffusers-unet: the loracli network computes diffusers' UNet2DModel, LoRA wraps its attention, --only-lora."""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("diffusers", reason="needs diffusers and loracli-diffusers: pip install -e plugins/loracli-diffusers")
pytest.importorskip("loracli_diffusers", reason="needs loracli-diffusers: pip install -e plugins/loracli-diffusers")
import torch
from diffusers import UNet2DModel

import loracli
from loracli import registry
from loracli.conditioning.inject import lora_projections
from loracli.testing import ModelTesterMixin, assert_bit_equal, parameter_count, perturb
from loracli_diffusers.unet import DDPM_CIFAR10_UNET, TINY_UNET

TINY = dict(sample_size=32, in_channels=3, out_channels=3, **TINY_UNET)


class TestDiffusersUNet(ModelTesterMixin):
    model, preset, model_kwargs, label_dim = "diffusers-unet", "tiny", {}, 3


def reference(seed: int = 0, **settings) -> UNet2DModel:
    """diffusers' own network with random weights (perturbed, so no zero-initialised layer hides a bug)."""
    torch.manual_seed(seed)
    unet = UNet2DModel(**{**TINY, **settings}).eval()
    perturb(unet.parameters(), scale=0.1, seed=seed)
    return unet


def ours(unet: UNet2DModel, cond: str = "none", label_dim: int = 0, **overrides):
    """The loracli network holding ``unet``'s weights, then ``cond`` added (the drop-in recipe)."""
    model = loracli.create_model("diffusers-unet", preset="tiny", label_dim=label_dim, **overrides).eval()
    model.net.unet.load_state_dict(unet.state_dict())
    return loracli.build.add_conditions(model, cond)


def inputs(batch: int = 3):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, 32, 32, generator=g), torch.tensor([0, 417, 999][:batch])


def test_registered_from_its_own_distribution():
    assert registry.models()["diffusers-unet"].distribution == "loracli-diffusers"


@pytest.mark.parametrize("cond", ["none", "time-lora+uc-lora"])
def test_fresh_network_computes_diffusers_exactly(cond):
    unet = reference()
    x, t = inputs()
    with torch.no_grad():
        assert_bit_equal(ours(unet, cond)(x, t), unet(x, t).sample)


def test_class_vectors_give_diffusers_class_embedding_lookup():
    unet = reference(num_class_embeds=4)
    x, t = inputs()
    labels = torch.tensor([3, 0, 2])
    model = ours(unet, "class-lora", label_dim=4)
    with torch.no_grad():
        expected = unet(x, t, labels).sample
        assert_bit_equal(model(x, t, labels), expected)
        other = model(x, t, torch.tensor([1, 1, 1]))
    assert not torch.allclose(other, expected)


def test_lora_wraps_q_k_v_and_out_of_every_attention_and_gets_trained():
    model = ours(reference(), "time-lora")
    wrapped = lora_projections(model.net)
    blocks = [s.block for s in model.attention_sites()]
    assert len(blocks) == 4  # 16x16: one down, two up (layers_per_block + 1); and the middle block
    assert sorted(wrapped) == sorted(f"{b}.{p}" for b in blocks for p in ("to_q", "to_k", "to_v", "to_out.0"))
    perturb(model.condition_parameters(), seed=3)
    x, t = inputs()
    with torch.no_grad():
        assert not torch.allclose(model(x, t), ours(reference(), "none")(x, t))


def test_v_prediction_output_is_turned_into_epsilon():
    unet = reference()
    model = ours(unet, prediction="v_prediction")
    x, t = inputs()
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[t].float().reshape(-1, 1, 1, 1)
    with torch.no_grad():
        v = unet(x, t).sample
        torch.testing.assert_close(model(x, t), abar.sqrt() * v + (1 - abar).sqrt() * x, rtol=1e-5, atol=1e-5)


def test_only_lora_removes_exactly_the_time_and_class_modulation():
    full = loracli.create_model("diffusers-unet", label_dim=4)
    bare = loracli.create_model("diffusers-unet", label_dim=4, only_lora=True)
    full_names = {n for n, _ in full.named_parameters()}
    bare_names = {n for n, _ in bare.named_parameters()}
    removed = full_names - bare_names
    assert not bare_names - full_names
    assert removed and all(".time_emb_proj." in n or n.startswith(("net.unet.time_embedding.", "net.unet.class_embedding."))
                           for n in removed)
    assert not any(".time_emb_proj." in n or "time_embedding" in n for n in bare_names)
    perturb(bare.parameters(), scale=0.1)
    x, _ = inputs()
    with torch.no_grad():  # nothing in the base network depends on the timestep any more ...
        assert_bit_equal(bare(x, torch.full((3,), 5)), bare(x, torch.full((3,), 900)))
    lora = loracli.build.add_conditions(copy.deepcopy(bare), "time-lora")
    perturb(lora.condition_parameters(), seed=4)
    with torch.no_grad():  # ... but it reaches the attention through TimeLoRA
        assert not torch.allclose(lora(x, torch.full((3,), 5)), lora(x, torch.full((3,), 900)))


def test_unsupported_diffusers_settings_are_refused_with_a_sentence():
    with pytest.raises(loracli.UserError, match="positional time embeddings"):
        loracli.create_model("diffusers-unet", unet={**TINY_UNET, "time_embedding_type": "fourier"})


def test_ddpm_cifar10_preset_is_diffusers_network_and_parameter_counts():
    with torch.device("meta"):
        reference_count = parameter_count(UNet2DModel(sample_size=32, in_channels=3, out_channels=3,
                                                      **DDPM_CIFAR10_UNET).parameters())
        counts = {cond: parameter_count(loracli.create_model("diffusers-unet", preset="ddpm-cifar10", cond=cond,
                                                             label_dim=10 if "class" in cond else 0).parameters())
                  for cond in ("none", "time-lora", "uc-lora")}
        bare = parameter_count(loracli.create_model("diffusers-unet", preset="ddpm-cifar10", only_lora=True).parameters())
    assert counts["none"] == reference_count == 35_746_307  # google/ddpm-cifar10-32's 35.7 M
    # six attention blocks of 256 channels (2 down and 3 up at 16x16, the middle), 4 projections each, every
    # projection its own branch: A [m r, 256], B [256, m r] and TimeLoRA's (T + 1) x m table (r 4, m 11)
    assert counts["time-lora"] - counts["none"] == 6 * 4 * (2 * 44 * 256 + 1001 * 11)
    # only LoRA: the time MLP (128 -> 512 -> 512) and every ResNet's time_emb_proj (512 -> its channels) go
    resnet_channels = [128] * 2 + [256] * 6 + [256] * 2 + [256] * 9 + [128] * 3  # down, mid, up
    removed = (128 * 512 + 512) + (512 * 512 + 512) + sum(512 * c + c for c in resnet_channels)
    assert bare == counts["none"] - removed
