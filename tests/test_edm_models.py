"""The ``edm`` base model: reference parameter counts and keys, seeded initialisation, attention layout,
scale-and-shift removal, the embedding tap, and the builder config.

Expected values come from NVlabs/edm: the counts of FORMATS.md §1.4 and PAPER.md §2.7-2.8 (checked against
the reference code on the meta device), keys and shapes of FORMATS §1.5, and tests/fixtures/edm/*.npz (the
statistics of weights the reference initialised from a fixed seed).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import loracli
from loracli.errors import UserError
from loracli.models.edm import EMBEDDING_TAP, SPEC, build
from loracli.models.edm.blocks import UNetBlock
from loracli.models.edm.config import from_reference, full_config
from loracli.models.edm.presets import match_preset

FIXTURES = Path(__file__).parent / "fixtures" / "edm"
TINY = dict(img_resolution=8, img_channels=3, model_channels=8, channel_mult=[1, 2], num_blocks=1,
            attn_resolutions=[4])
TINY_ADM = dict(TINY, arch="adm", model_channels=16, channel_mult=[1, 4], channel_mult_emb=1)


def meta_model(**kw):
    with torch.device("meta"):
        return loracli.create_model("edm", **kw)


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("preset,label_dim,expected", [
    ("cifar10", 0, 55_733_891),
    ("cifar10", 10, 55_735_299),
    ("cifar10-ncsnpp", 10, 56_400_643),
    ("cifar10-ncsnpp", 0, 56_397_827),
    ("ffhq64", 0, 61_805_571),
    ("afhqv2-64", 0, 61_805_571),
    ("imagenet64", None, 295_899_267),
])
def test_preset_parameter_counts_equal_the_reference(preset, label_dim, expected):
    assert num_params(meta_model(preset=preset, label_dim=label_dim)) == expected


def test_only_lora_base_drops_exactly_the_33_affine_layers_and_keeps_the_mapping_network():
    full = meta_model(preset="cifar10").state_dict()
    only = meta_model(preset="cifar10", only_lora=True).state_dict()
    removed = set(full) - set(only)
    assert not set(only) - set(full)
    assert removed == {k for k in full if ".affine." in k}
    assert len({k.rsplit(".", 1)[0] for k in removed}) == 33
    assert sum(full[k].numel() for k in removed) == 4_333_824
    assert num_params(meta_model(preset="cifar10", only_lora=True)) == 55_733_891 - 4_333_824
    assert {"net.model.map_layer0.weight", "net.model.map_layer1.weight", "net.model.map_augment.weight"} <= set(only)


def test_cifar10_keys_and_shapes_follow_the_reference_layout():
    sd = meta_model(preset="cifar10", label_dim=10).net.state_dict()
    assert len(sd) == 427 and sum(k.endswith("resample_filter") for k in sd) == 8
    shapes = {
        "model.map_label.weight": (128, 10), "model.map_augment.weight": (128, 9),
        "model.map_layer0.weight": (512, 128), "model.map_layer1.weight": (512, 512),
        "model.enc.32x32_conv.weight": (128, 3, 3, 3), "model.enc.32x32_block0.skip.weight": (256, 128, 1, 1),
        "model.enc.16x16_down.conv0.resample_filter": (1, 1, 2, 2),
        "model.enc.16x16_down.skip.resample_filter": (1, 1, 2, 2),
        "model.enc.16x16_block0.affine.weight": (256, 512), "model.enc.16x16_block0.qkv.weight": (768, 256, 1, 1),
        "model.enc.16x16_block0.proj.weight": (256, 256, 1, 1), "model.dec.8x8_block0.conv0.weight": (256, 512, 3, 3),
        "model.dec.32x32_block4.conv0.weight": (256, 384, 3, 3), "model.dec.32x32_aux_norm.weight": (256,),
        "model.dec.32x32_aux_conv.weight": (3, 256, 3, 3),
    }
    assert {k: tuple(sd[k].shape) for k in shapes} == shapes
    assert "model.map_augment.bias" not in sd


def test_cifar10_attention_sites_are_the_six_blocks_of_the_paper():
    model = meta_model(preset="cifar10")
    sites = model.attention_sites()
    assert [s.block for s in sites] == [f"model.enc.16x16_block{i}" for i in range(4)] + [
        "model.dec.8x8_in0", "model.dec.16x16_block4"]
    for s in sites:
        assert (s.norm, s.qkv, s.proj) == (f"{s.block}.norm2", f"{s.block}.qkv", f"{s.block}.proj")
        assert (s.channels, s.heads) == (256, 1)
        assert isinstance(model.net.get_submodule(s.qkv), nn.Module)


def test_imagenet64_adm_heads_are_channels_over_64():
    heads = {(s.channels, s.heads) for s in meta_model(preset="imagenet64").attention_sites()}
    assert heads == {(384, 6), (576, 9), (768, 12)}


@pytest.mark.parametrize("only_lora", [False, True])
def test_embedding_tap_is_an_identity_without_parameters(only_lora):
    model = meta_model(preset="cifar10", only_lora=only_lora)
    assert SPEC.tap_name(model.config["model_config"]) == EMBEDDING_TAP == "model.emb_tap"
    tap = model.net.get_submodule(EMBEDDING_TAP)
    assert type(tap) is nn.Identity and not list(tap.parameters())
    assert SPEC.embedding_channels(model.net) == 512


def sinusoid(c_noise: torch.Tensor, n: int, endpoint: bool) -> torch.Tensor:
    """FORMATS §1.7: f_i = (1/10000)^(i/(n/2 - e)), output [cos(t f), sin(t f)]."""
    i = torch.arange(n // 2, dtype=torch.float64)
    f = (1 / 10000) ** (i / (n // 2 - (1 if endpoint else 0)))
    t = c_noise.double()[:, None] * f
    return torch.cat([t.cos(), t.sin()], dim=1)


def tapped_embedding(net: nn.Module, *args, **kwargs) -> torch.Tensor:
    """What the network passes through its embedding tap during one forward pass, in float64."""
    seen = []
    handle = net.get_submodule(EMBEDDING_TAP).register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        net(*args, **kwargs)
    handle.remove()
    return seen[0].double()


def linear(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    out = x.double() @ layer.weight.detach().double().T
    return out + layer.bias.detach().double() if layer.bias is not None else out


def test_songunet_tap_sees_the_embedding_every_affine_reads():
    torch.manual_seed(0)
    net = build(precond="edm", arch="ddpmpp", label_dim=3, augment_dim=9, **TINY).eval()
    sigma, labels, aug = torch.tensor([0.5, 3.0]), torch.eye(3)[[0, 2]], torch.randn(2, 9)
    seen = tapped_embedding(net, torch.randn(2, 3, 8, 8), sigma, labels, augment_labels=aug)
    m = net.model
    pe = sinusoid(sigma.log() / 4, 8, endpoint=True)
    emb = torch.cat([pe[:, 4:], pe[:, :4]], dim=1)  # halves swapped to [sin, cos]
    emb = emb + linear(labels * math.sqrt(3), m.map_label) + linear(aug, m.map_augment)
    emb = F.silu(linear(F.silu(linear(emb, m.map_layer0)), m.map_layer1))
    torch.testing.assert_close(seen, emb, rtol=1e-5, atol=1e-6)


def test_adm_tap_sees_the_embedding_every_affine_reads():
    torch.manual_seed(0)
    net = build(precond="edm", label_dim=3, **TINY_ADM).eval()
    sigma, labels = torch.tensor([0.5, 3.0]), torch.eye(3)[[0, 2]]
    seen = tapped_embedding(net, torch.randn(2, 3, 8, 8), sigma, labels)
    m = net.model
    emb = linear(F.silu(linear(sinusoid(sigma.log() / 4, 16, endpoint=False), m.map_layer0)), m.map_layer1)
    torch.testing.assert_close(seen, F.silu(emb + linear(labels, m.map_label)), rtol=1e-5, atol=1e-6)


def test_multi_head_attention_keeps_edms_interleaved_qkv_layout():
    """FORMATS §1.6: qkv viewed as [N*H, C/H, 3, HW], softmax(q^T k / sqrt(C/H)), a = v w^T, proj, residual."""
    torch.manual_seed(0)
    block = UNetBlock(16, 16, 8, attention=True, num_heads=2, skip_scale=0.7, eps=1e-6,
                      init_zero=dict(init_weight=0.3)).double().eval()
    x, emb = torch.randn(2, 16, 4, 4, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    out = block(x, emb)

    block.num_heads = 0  # the residual part alone
    h = block(x, emb)
    qkv = block.qkv(block.norm2(h)).reshape(2 * 2, 8, 3, 16)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    w = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(8)).softmax(dim=2)
    a = torch.einsum("nqk,nck->ncq", w, v).reshape(2, 16, 4, 4)
    torch.testing.assert_close(out, (block.proj(a) + h) * 0.7)


@pytest.mark.parametrize("adaptive_scale", [False, True])
def test_without_scale_shift_a_block_acts_as_zero_scale_and_shift(adaptive_scale):
    torch.manual_seed(0)
    kw = dict(adaptive_scale=adaptive_scale, attention=True, num_heads=1, init_zero=dict(init_weight=0.3))
    with_affine, without = UNetBlock(8, 16, 12, **kw), UNetBlock(8, 16, 12, scale_shift=False, **kw)
    assert without.affine is None
    with torch.no_grad():
        with_affine.affine.weight.zero_()
        with_affine.affine.bias.zero_()
    without.load_state_dict({k: v for k, v in with_affine.state_dict().items() if "affine" not in k})
    x, emb = torch.randn(2, 8, 4, 4), torch.randn(2, 12)
    torch.testing.assert_close(without(x, emb), with_affine(x, emb))
    torch.testing.assert_close(without(x, None), with_affine(x, emb))


@pytest.mark.parametrize("config", [dict(arch="ddpmpp", **TINY), TINY_ADM], ids=["songunet", "adm"])
def test_label_dropout_of_one_trains_on_zero_labels(config):
    torch.manual_seed(0)
    net = build(precond="edm", label_dim=3, dropout=0, label_dropout=1.0, **config)
    with torch.no_grad():  # move the (near-)zero output layers off their init so labels show in the output
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 3.0])
    with torch.no_grad():
        dropped = net.train()(x, sigma, torch.eye(3)[[0, 2]])
        zero = net.eval()(x, sigma, torch.zeros(2, 3))
        kept = net.eval()(x, sigma, torch.eye(3)[[0, 2]])
    torch.testing.assert_close(dropped, zero)
    assert not torch.allclose(kept, zero)


def test_use_fp16_runs_in_fp32_on_cpu():
    torch.manual_seed(0)
    fp16 = build(precond="edm", arch="ddpmpp", use_fp16=True, **TINY).eval()
    fp32 = build(precond="edm", arch="ddpmpp", **TINY).eval()
    fp32.load_state_dict(fp16.state_dict())
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 3.0])
    with torch.no_grad():
        torch.testing.assert_close(fp16(x, sigma), fp32(x, sigma), rtol=0, atol=0)


@pytest.mark.parametrize("npz", sorted(FIXTURES.glob("*.npz")), ids=lambda p: p.stem)
def test_seeded_initialisation_equals_the_reference(npz):
    """Same construction order and init modes draw the same weights as the reference from the same seed."""
    data = np.load(npz)
    ref = json.loads(str(data["reference"]))
    kwargs = dict(ref["init_kwargs"])
    config = from_reference(ref["class"], (), kwargs, kwargs["model_type"])
    torch.manual_seed(int(data["init_seed"]))
    state = build(**config).state_dict()
    assert list(state) == list(data["init_keys"])
    # Tolerances cover the summation order of parallel reductions (1e-10 relative seen with one thread against
    # two); a different draw moves these sums by about the square root of the tensor size times its scale.
    np.testing.assert_allclose([v.double().sum().item() for v in state.values()], data["init_sum"], rtol=1e-9,
                               atol=1e-6)
    np.testing.assert_allclose([v.double().square().sum().item() for v in state.values()], data["init_sumsq"],
                               rtol=1e-9)


def test_arch_shorthand_expands_as_train_py_and_explicit_keys_win():
    full = full_config({"precond": "edm", "arch": "ncsnpp", "img_resolution": 32, "img_channels": 3,
                        "channel_mult": [1, 2, 2, 2]})
    assert full["model_type"] == "SongUNet" and full["embedding_type"] == "fourier"
    assert full["encoder_type"] == "residual" and full["resample_filter"] == [1, 3, 3, 1]
    assert full["channel_mult_noise"] == 2 and full["channel_mult"] == [1, 2, 2, 2]
    assert full["num_blocks"] == 4 and full["attn_resolutions"] == [16] and full["sigma_data"] == 0.5
    assert "sigma_max" not in full  # unbounded by default, kept out of the JSON
    json.dumps(full, allow_nan=False)


@pytest.mark.parametrize("config,message", [
    (dict(arch="adm", model_type="SongUNet"), "model_type"),
    (dict(arch="unet"), "Unknown EDM arch"),
    (dict(precond="ddim"), "preconditioner"),
    (dict(arch="ddpmpp", num_heads=4), "no setting num_heads"),
    (dict(arch="ddpmpp", encoder_type="fancy"), "encoder_type"),
])
def test_bad_configs_are_user_errors(config, message):
    with pytest.raises(UserError, match=message):
        build(**{"img_resolution": 8, "img_channels": 3, **config})


@pytest.mark.parametrize("precond,arch,overrides,expected", [
    ("EDMPrecond", "ddpmpp", dict(img_resolution=32, label_dim=10, augment_dim=9, dropout=0.13), "cifar10"),
    ("EDMPrecond", "ddpmpp", dict(img_resolution=32, augment_dim=9, dropout=0.1), "cifar10"),
    ("EDMPrecond", "ncsnpp", dict(img_resolution=32, augment_dim=9, dropout=0.13), "cifar10-ncsnpp"),
    ("EDMPrecond", "ddpmpp", dict(img_resolution=64, augment_dim=9, dropout=0.05, channel_mult=[1, 2, 2, 2]), "ffhq64"),
    ("EDMPrecond", "ddpmpp", dict(img_resolution=64, augment_dim=9, dropout=0.25, channel_mult=[1, 2, 2, 2]),
     "afhqv2-64"),
    ("EDMPrecond", "adm", dict(img_resolution=64, label_dim=1000, dropout=0.1, use_fp16=True), "imagenet64"),
    ("VPPrecond", "ddpmpp", dict(img_resolution=32, augment_dim=9, dropout=0.13), None),
    ("EDMPrecond", "ddpmpp", dict(img_resolution=32, dropout=0.13), None),
])
def test_reference_configs_map_onto_their_presets(precond, arch, overrides, expected):
    from loracli.models.edm.config import ARCHS

    kwargs = {**ARCHS[arch], "img_channels": 3, "use_fp16": False, **overrides}  # as train.py passes them
    assert match_preset(from_reference(precond, (), kwargs, kwargs["model_type"])) == expected


def test_presets_carry_the_papers_sampling_and_lora_defaults():
    presets = SPEC.presets
    assert presets["cifar10"].sampling == {"sampler": "heun", "steps": 18}
    assert presets["ffhq64"].sampling["steps"] == presets["afhqv2-64"].sampling["steps"] == 40
    assert presets["imagenet64"].sampling == {"sampler": "heun", "steps": 256, "S_churn": 40, "S_min": 0.05,
                                              "S_max": 50, "S_noise": 1.003}
    assert presets["cifar10"].conditions == {"uc-lora": {"bases": 18}}
    assert presets["ffhq64"].conditions == {"uc-lora": {"bases": 20}}
    assert SPEC.default_preset == "cifar10"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_reduced_precision_paths_on_cuda_stay_close_to_fp32():
    torch.manual_seed(0)
    net = build(precond="edm", arch="ddpmpp", label_dim=3, **TINY).cuda().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x, sigma, labels = torch.randn(2, 3, 8, 8).cuda(), torch.tensor([0.5, 3.0]).cuda(), torch.eye(3)[[0, 2]].cuda()
    with torch.no_grad():
        fp32 = net(x, sigma, labels, force_fp32=True)
        net.use_fp16 = True
        fp16 = net(x, sigma, labels)
        net.use_fp16 = False
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = net(x, sigma, labels)
    for out in (fp16, bf16):
        assert out.dtype == torch.float32
        assert (out - fp32).abs().max() / fp32.abs().max() < 3e-2
