"""improved-diffusion flags of `loracli convert` reach the reader and end up in the checkpoint's config."""

from __future__ import annotations

from pathlib import Path

from loracli.io.checkpoint import read_metadata

PT = Path(__file__).parent / "fixtures" / "iddpm" / "model000123.pt"


def test_rescale_timesteps_and_schedule_flags(cli, tmp_path):
    out = tmp_path / "a.safetensors"
    result = cli("convert", PT, out, "--image_size", "16", "--rescale_timesteps", "False", "--diffusion_steps", "1000",
                 "--noise_schedule", "linear")
    assert result.exit_code == 0, result.output
    mc = read_metadata(out)["config"]["model_config"]
    assert mc["rescale_timesteps"] is False
    assert mc["diffusion_steps"] == 1000 and mc["noise_schedule"] == "linear" and mc["img_resolution"] == 16


def test_bad_boolean_is_one_sentence(cli, tmp_path):
    out = tmp_path / "b.safetensors"
    result = cli("convert", PT, out, "--rescale_timesteps", "maybe")
    assert result.exit_code == 2 and "--rescale-timesteps takes True or False" in result.output
    assert not out.exists()


def test_lora_shape_flags_need_a_condition(cli, tmp_path):
    result = cli("convert", PT, tmp_path / "c.safetensors", "--mlp", "128,64")
    assert result.exit_code == 2 and "--cond" in result.output
