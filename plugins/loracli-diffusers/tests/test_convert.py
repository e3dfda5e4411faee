"""loracli convert on diffusers folders: the converted network computes diffusers' own, the process is mapped."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("diffusers", reason="needs diffusers and loracli-diffusers: pip install -e plugins/loracli-diffusers")
pytest.importorskip("loracli_diffusers", reason="needs loracli-diffusers: pip install -e plugins/loracli-diffusers")
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

import loracli
from loracli.io.convert import convert_model
from loracli.testing import assert_bit_equal, perturb
from loracli_diffusers.unet import TINY_UNET


def pipeline_folder(tmp_path, scheduler=None, **unet_settings):
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, **{**TINY_UNET, **unet_settings}).eval()
    perturb(unet.parameters(), scale=0.1)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**(scheduler or {}))).save_pretrained(tmp_path / "pipe")
    return tmp_path / "pipe", unet


def test_pipeline_folder_converts_to_the_same_network_and_process(tmp_path):
    folder, unet = pipeline_folder(tmp_path, {"variance_type": "fixed_large"}, num_class_embeds=5)
    model = convert_model(folder, cond="class-lora")
    assert model.config["preset"] is None  # another process than the tiny preset's
    config = model.config["model_config"]
    assert (config["diffusion_steps"], config["noise_schedule"], config["fixed_variance"], config["learn_sigma"],
            config["prediction"], config["label_dim"]) == (1000, "linear", "large", False, "epsilon", 5)
    x, t, labels = torch.randn(2, 3, 32, 32), torch.tensor([3, 800]), torch.tensor([4, 1])
    with torch.no_grad():
        assert_bit_equal(model(x, t, labels), unet(x, t, labels).sample)


def test_model_folder_and_saved_checkpoint_rebuild_it(tmp_path):
    folder, unet = pipeline_folder(tmp_path, {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"})
    assert convert_model(pipeline_folder(tmp_path / "tiny")[0]).config["preset"] == "tiny"
    model = convert_model(folder / "unet")  # the scheduler beside it is found
    assert model.config["model_config"]["noise_schedule"] == "cosine"
    assert model.config["model_config"]["prediction"] == "v_prediction"
    loaded = loracli.load(loracli.save(model, tmp_path / "c.safetensors"))
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([0, 999])
    with torch.no_grad():
        assert_bit_equal(loaded(x, t), model(x, t))


def test_the_ddpm_cifar10_config_is_recognised_as_its_preset(tmp_path):
    from loracli_diffusers.convert import matching_preset, model_settings, process_settings
    from loracli_diffusers.unet import DDPM_CIFAR10_UNET

    hub_config = {"_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", "sample_size": 32, "in_channels": 3,
                  "out_channels": 3, **DDPM_CIFAR10_UNET}
    hub_scheduler = {"_class_name": "DDPMScheduler", "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001,
                     "clip_sample": True, "num_train_timesteps": 1000, "trained_betas": None,
                     "variance_type": "fixed_small"}
    assert matching_preset(model_settings(hub_config, process_settings(hub_scheduler))) == "ddpm-cifar10"


def test_old_attention_parameter_names_are_renamed(tmp_path):
    from safetensors.torch import load_file, save_file

    folder, unet = pipeline_folder(tmp_path)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    old = {k.replace("to_q.", "query.").replace("to_k.", "key.").replace("to_v.", "value.")
           .replace("to_out.0.", "proj_attn."): v for k, v in load_file(str(weights)).items()}
    assert any(".query." in k for k in old)
    save_file(old, str(weights))
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([10])
    with torch.no_grad():
        assert_bit_equal(convert_model(folder)(x, t), unet(x, t).sample)


def test_bin_weights_are_read_without_running_code(tmp_path):
    folder, unet = pipeline_folder(tmp_path)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(unet.state_dict(), folder / "unet" / "diffusion_pytorch_model.bin")
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([10])
    with torch.no_grad():
        assert_bit_equal(convert_model(folder)(x, t), unet(x, t).sample)
    torch.save({"weights": torch.nn.Linear(2, 2)}, folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(loracli.UserError, match="could not be read as plain tensors"):
        convert_model(folder)


@pytest.mark.parametrize("change, message", [
    ({"beta_schedule": "scaled_linear"}, "not 'scaled_linear'"),
    ({"beta_end": 0.012}, "linear betas run"),
    ({"prediction_type": "sample"}, "not 'sample' ones"),
    ({"variance_type": "learned"}, "variance types"),
])
def test_processes_loracli_cannot_run_are_refused(tmp_path, change, message):
    folder, _ = pipeline_folder(tmp_path)
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(loracli.UserError, match=message):
        convert_model(folder)


def test_hub_id_and_other_folders_get_one_sentence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(loracli.UserError, match="huggingface-cli download google/ddpm-cifar10-32 --local-dir"):
        convert_model("google/ddpm-cifar10-32")
    (tmp_path / "empty").mkdir()
    with pytest.raises(loracli.UserError, match="is a folder loracli cannot convert"):
        convert_model(tmp_path / "empty")
