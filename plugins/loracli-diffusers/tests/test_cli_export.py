"""The CLI on diffusers networks (convert, train --init/--finetune/--resume, sample, fid, info, models) and
``loracli export --diffusers``, whose folder diffusers loads and loracli converts back to the same network."""

from __future__ import annotations

import json
import warnings

import pytest

pytest.importorskip("diffusers", reason="needs diffusers and loracli-diffusers: pip install -e plugins/loracli-diffusers")
pytest.importorskip("loracli_diffusers", reason="needs loracli-diffusers: pip install -e plugins/loracli-diffusers")
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from typer.testing import CliRunner

import loracli
from loracli.cli.app import make_app
from loracli.testing import assert_bit_equal, perturb
from loracli_diffusers.unet import TINY_UNET

TINY_RECIPE = """
[train]
batch = 4
lr_rampup_kimg = 0
log_every = 1
[sample]
images = 2
steps = 2
"""


def cli(*args):
    return CliRunner().invoke(make_app(), [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "250"})


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipe") / "ddpm-tiny"
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, num_class_embeds=10, **TINY_UNET).eval()
    perturb(unet.parameters(), scale=0.05)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(variance_type="fixed_large")).save_pretrained(folder)
    return folder, unet


def test_models_lists_it_with_its_distribution():
    result = cli("models")
    assert result.exit_code == 0 and "diffusers-unet" in result.output and "loracli-diffusers" in result.output


class StandInInception(torch.nn.Module):
    """clean-fid's TorchScript Inception interface (resizes inside; ``layers`` on [-1, 1]) with 4 random features."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 9, stride=8), torch.nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.layers((x - 128) / 128)


def test_convert_train_resume_sample_fid_info(pipeline, tmp_path, monkeypatch):
    folder, _ = pipeline
    base = tmp_path / "base.safetensors"
    result = cli("convert", folder, base)
    assert result.exit_code == 0, result.output
    toml = tmp_path / "tiny.toml"
    toml.write_text(TINY_RECIPE)
    run = tmp_path / "run"
    result = cli("train", "diffusers-unet", "--init", base, "--cond", "time-lora+class-lora", "--finetune",
                 "--config", toml, "--steps", "2", "--outdir", run)
    assert result.exit_code == 0, result.output
    trained = loracli.load(run / "ckpt.safetensors")
    start = loracli.load(base)
    # --finetune: the diffusers weights are untouched, only the adapters moved
    assert all(torch.equal(a, b) for a, b in zip(start.parameters(), trained.base_parameters()))
    assert any(p.abs().sum() > 0 for n, p in trained.named_parameters() if n.endswith(".up"))
    result = cli("train", "diffusers-unet", "--resume", "--outdir", run, "--steps", "3")
    assert result.exit_code == 0, result.output
    assert loracli.load(run / "ckpt.safetensors").checkpoint["step"] == 3
    result = cli("sample", run / "ckpt.safetensors", "--seeds", "0-1", "--class", "3", "--steps", "2",
                 "--outdir", tmp_path / "images")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "images").glob("0*.png")) == ["000000.png", "000001.png"]
    monkeypatch.setenv("LORACLI_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "inception-2015-12-05.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates TorchScript; clean-fid's network is one
        torch.jit.save(torch.jit.script(StandInInception().eval()), str(weights))
    result = cli("fid", run / "ckpt.safetensors", "--num", "2", "--steps", "2", "--ref", tmp_path / "images",
                 "--weights", weights)
    assert result.exit_code == 0, result.output
    record = json.loads(next(run.glob("ckpt.fid-*.json")).read_text())
    assert record["n"] == 2 and record["fid"] >= 0
    result = cli("info", run / "ckpt.safetensors")
    assert result.exit_code == 0 and "to_q" in result.output and "time-lora" in result.output


def test_export_round_trip_through_diffusers(pipeline, tmp_path):
    folder, unet = pipeline
    model = loracli.io.convert.convert_model(folder)
    ckpt = loracli.save(model, tmp_path / "base.safetensors")
    out = tmp_path / "exported"
    result = cli("export", ckpt, "--diffusers", out)
    assert result.exit_code == 0, result.output
    loaded = DDPMPipeline.from_pretrained(out)
    assert loaded.scheduler.config.variance_type == "fixed_large"
    x, t, labels = torch.randn(2, 3, 16, 16), torch.tensor([5, 700]), torch.tensor([1, 9])
    with torch.no_grad():
        assert_bit_equal(loaded.unet(x, t, labels).sample, unet(x, t, labels).sample)
        again = loracli.io.convert.convert_model(out)
        assert_bit_equal(again(x, t, labels), model(x, t, labels))
    assert again.config["model_config"] == model.config["model_config"]
    result = cli("export", ckpt, "--diffusers", out)  # never overwrites
    assert result.exit_code == 2 and "already exists" in result.output


@pytest.mark.parametrize("cond, only_lora, message", [("time-lora", False, "LoRA conditioning (time-lora)"),
                                                      ("none", True, "no time embedding")])
def test_export_refuses_what_diffusers_cannot_run(tmp_path, cond, only_lora, message):
    ckpt = loracli.save(loracli.create_model("diffusers-unet", cond=cond, only_lora=only_lora), tmp_path / "c.safetensors")
    result = cli("export", ckpt, "--diffusers", tmp_path / "out")
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "out").exists()
