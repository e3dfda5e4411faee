"""Converting improved-diffusion .pt state dicts: shape inference, conversion round trip, refusals."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import loracli
from loracli.errors import UserError
from loracli.io.convert import convert
from loracli.io.convert import iddpm_pt
from loracli.models.iddpm import SPEC, IDDPMUNet

FIXTURES = Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location("make_iddpm_fixtures", FIXTURES / "make_iddpm_fixtures.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)
UNET = np.load(FIXTURES / "iddpm" / "unet.npz")
COMMITTED = FIXTURES / "iddpm" / fx.COMMITTED_FILE

# What a user passes for each fixture case: what the shapes cannot tell.
OPTIONS = {
    "small_uncond": dict(image_size=16, num_heads=4, num_heads_upsample=2),
    "small_cond": dict(image_size=16, num_heads=2),
    "small_additive": dict(image_size=16, num_heads=1, diffusion_steps=1000, rescale_timesteps=False),
    "tiny_cond": dict(image_size=16, num_heads=2),
}


def case_state(name: str) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in IDDPMUNet(**fx.our_config(fx.MODEL_CASES[name])).state_dict().items()}
    return fx.fixture_weights(shapes)


def write(path: Path, obj, legacy: bool = False) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def expected_config(name: str) -> dict:
    config = fx.our_config(fx.MODEL_CASES[name])
    return {**config, "noise_schedule": "cosine"}


def test_committed_checkpoint_converts_and_loads_with_the_reference_outputs(tmp_path):
    assert iddpm_pt.detect(COMMITTED)
    dst = convert(COMMITTED, tmp_path / "tiny.safetensors", **OPTIONS["tiny_cond"])
    model = loracli.load(dst)
    assert model.config["model_config"] == expected_config("tiny_cond")
    assert model.checkpoint["extra"]["converted_from"]["format"] == "iddpm-pt"
    x, t, y = fx.model_inputs(fx.MODEL_CASES["tiny_cond"])
    with torch.no_grad():
        out = model(x, t, y)
    ref = torch.from_numpy(UNET["tiny_cond__out"])
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


@pytest.mark.parametrize("name", list(fx.MODEL_CASES))
def test_shapes_give_back_the_fixture_configs(tmp_path, name):
    path = write(tmp_path / "model000100.pt", case_state(name))
    foreign = iddpm_pt.read(path, **OPTIONS[name])
    assert foreign.model == "iddpm" and foreign.preset is None
    assert foreign.model_config == expected_config(name)
    assert not foreign.ema and foreign.source["ema_rate"] is None


def test_legacy_format_and_ema_files_are_read(tmp_path):
    path = write(tmp_path / "ema_0.9999_000100.pt", case_state("small_cond"), legacy=True)
    assert not zipfile.is_zipfile(path) and iddpm_pt.detect(path)
    foreign = iddpm_pt.read(path, **OPTIONS["small_cond"])
    assert foreign.ema and foreign.source["ema_rate"] == 0.9999
    assert foreign.model_config == expected_config("small_cond")


def test_cifar10_shapes_give_the_preset_and_its_dropout(tmp_path, monkeypatch):
    with torch.device("meta"):
        state = IDDPMUNet(**SPEC.presets["cifar10"].config, label_dim=10).state_dict()
    monkeypatch.setattr(iddpm_pt, "_load_tensors", lambda path: state)
    foreign = iddpm_pt.read(write(tmp_path / "model.pt", {}))
    assert foreign.preset == "cifar10"
    assert foreign.model_config == {**SPEC.presets["cifar10"].config, "label_dim": 10, "scale_shift": True}
    assert iddpm_pt.read(tmp_path / "model.pt", diffusion_steps=1000).preset is None


def test_imagenet64_shapes_give_the_preset():
    with torch.device("meta"):
        state = IDDPMUNet(**SPEC.presets["imagenet64"].config).state_dict()
    arch = iddpm_pt.infer_architecture(state)
    assert arch["channel_mult"] == [1, 2, 3, 4] and arch["attention_ds"] == [4, 8] and arch["num_res_blocks"] == 3


def test_detect_claims_torch_files_only(tmp_path):
    assert iddpm_pt.detect(write(tmp_path / "a.pt", {"x": torch.zeros(1)}))
    (tmp_path / "b.bin").write_bytes(b"\x00" * 64)
    assert not iddpm_pt.detect(tmp_path / "b.bin")
    with zipfile.ZipFile(tmp_path / "c.zip", "w") as z:
        z.writestr("00000/img00000000.png", b"")
    assert not iddpm_pt.detect(tmp_path / "c.zip")


@pytest.mark.parametrize("content, message", [
    ("optimizer", "optimizer state"),
    ("module", "pickled Python objects"),
    ("foreign", "expected keys time_embed.0.weight, input_blocks.0.0.weight, out.2.weight"),
    ("list", "not a state dict of tensors"),
])
def test_files_that_are_not_networks_are_user_errors(tmp_path, content, message):
    if content == "optimizer":
        p = torch.nn.Parameter(torch.ones(2))
        opt = torch.optim.Adam([p])
        p.sum().backward()
        opt.step()
        obj = opt.state_dict()
    else:
        obj = {"module": torch.nn.Linear(2, 2), "foreign": {"map_layer0.weight": torch.zeros(2)},
               "list": [torch.zeros(1)]}[content]
    path = write(tmp_path / "opt000100.pt", obj)
    assert iddpm_pt.detect(path)
    with pytest.raises(UserError, match=message):
        iddpm_pt.read(path)


def test_truncated_file_is_a_user_error(tmp_path):
    data = write(tmp_path / "full.pt", case_state("tiny_cond")).read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    assert iddpm_pt.detect(tmp_path / "cut.pt")
    with pytest.raises(UserError, match="truncated or corrupt"):
        iddpm_pt.read(tmp_path / "cut.pt", **OPTIONS["tiny_cond"])


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.pop("out.0.bias"), r"missing 1 \(out.0.bias\)"),
    (lambda sd: sd.update({"extra.weight": torch.zeros(1)}), r"unexpected 1 \(extra.weight\)"),
    (lambda sd: sd.update({"middle_block.1.qkv.bias": torch.zeros(7)}), r"shape mismatch 1 \(middle_block.1.qkv.bias"),
    (lambda sd: sd.pop("input_blocks.1.0.emb_layers.1.weight"), "layout"),
])
def test_keys_or_shapes_that_do_not_fit_are_listed(tmp_path, edit, message):
    sd = case_state("tiny_cond")
    edit(sd)
    with pytest.raises(UserError, match=message):
        iddpm_pt.read(write(tmp_path / "model.pt", sd), **OPTIONS["tiny_cond"])


@pytest.mark.parametrize("options, message", [
    (dict(learn_sigma=False), "learn_sigma=True"),
    (dict(class_cond=False), "class_cond=True"),
    (dict(num_heads=3), "attention heads do not divide"),
    (dict(noise_schedule="sigmoid"), "noise schedule 'sigmoid'"),
    (dict(image_size=None), "--image-size"),
    (dict(image_size=15), "cannot be halved"),
])
def test_options_that_contradict_the_file_are_user_errors(options, message):
    with pytest.raises(UserError, match=message):
        iddpm_pt.read(COMMITTED, **{**OPTIONS["tiny_cond"], **options})
