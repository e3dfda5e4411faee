"""Learning tests: attention LoRA alone carries the class and the timestep, through `loracli train` itself.

Each test trains tiny only-LoRA nano networks (no scale-and-shift anywhere, so a condition reaches the network
through the attention adapters or not at all) for a few hundred steps on the built-in data, with the CLI, a
fixed seed and the same data order, then measures what they learned against the data itself:

- ClassLoRA: images sampled from the same seeds with class a and with class b differ in colour the way real
  class-a and class-b images differ. Without working adapters the two samples of a seed are identical.
- TimeLoRA: the held-out denoising loss beats that of the same network trained without any conditioning
  (which never sees t). Without working adapters both runs compute the same thing and the losses tie.

Margins are a fraction of the effect measured here (see the comments), wide enough for other platforms' floats.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import loracli
from loracli.conditioning.wrapper import ConditionedModel
from loracli.data import BuiltinShapes
from loracli.diffusion.evaluate import held_out_loss

STEPS = 300
NETWORK = {"img_resolution": 16, "model_channels": 8, "channel_mult": [1, 2], "attn_resolutions": [16, 8],
           "channels_per_head": 8}
# The nano recipe (lr 2e-3 with warm-up, EMA) at a CPU-test size; no sample grids.
SETTINGS = {"network": NETWORK, "train": {"batch": 32, "log_every": 50}, "sample": {"images": 0}}


@pytest.fixture
def train(cli, tmp_path):
    """``train("time-lora")``: an only-LoRA nano trained with `loracli train` for STEPS steps; its EMA network."""
    config = tmp_path / "tiny.toml"
    config.write_text("\n".join(f"[{table}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())
                                for table, values in SETTINGS.items()) + "\n")

    def run(cond: str) -> ConditionedModel:
        out = tmp_path / cond
        result = cli("train", "nano", "--only-lora", "--cond", cond, "--config", config, "--steps", STEPS,
                     "--seed", 0, "--outdir", out)
        assert result.exit_code == 0, result.output
        return loracli.load(out / "ckpt.safetensors")

    return run


def real_images(indices: range, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    data = BuiltinShapes(NETWORK["img_resolution"], seed=seed)
    items = [data[i] for i in indices]
    return torch.stack([torch.from_numpy(x) for x, _ in items]), torch.tensor([y for _, y in items])


def mean_colour(images: torch.Tensor) -> torch.Tensor:
    """Mean RGB of each image, ``[N, 3]``: classes of the built-in data differ in hue."""
    return images.to(torch.float64).mean(dim=(2, 3))


@pytest.mark.slow
def test_class_lora_alone_makes_samples_differ_as_the_classes_do(train):
    net = train("time-lora+class-lora")
    a, b = 0, 1  # a red disc against a blue square
    images, labels = real_images(range(2000))
    colours = mean_colour(images)
    data_difference = colours[labels == a].mean(0) - colours[labels == b].mean(0)

    seeds = range(32)
    sample_a = loracli.sample(net, seeds, class_labels=a, sampler="ddim", steps=25)
    sample_b = loracli.sample(net, seeds, class_labels=b, sampler="ddim", steps=25)
    # Per seed: the colour difference of its two samples, projected on the data's (1 = the data's difference).
    projection = (mean_colour(sample_a) - mean_colour(sample_b)) @ data_difference / data_difference.dot(data_difference)
    # Measured here: 32/32 seeds point the data's way, mean projection 0.41. Unwired adapters: all 0.
    assert (projection > 0).float().mean() >= 0.75, projection
    assert projection.mean() >= 0.15, projection


@pytest.mark.slow
def test_time_lora_alone_beats_no_conditioning_on_held_out_loss(train):
    held_out, _ = real_images(range(256), seed=1)  # other images than the training set's (seed 0)
    timelora = held_out_loss(train("time-lora"), held_out)
    control = held_out_loss(train("none"), held_out)  # only-LoRA without LoRA: t reaches the network nowhere
    ratio = timelora.per_level / control.per_level
    # Measured here: 0.947 on average, below 1 at all 16 timesteps. Unwired adapters: 1 exactly.
    assert timelora.mean < 0.98 * control.mean, (timelora.per_level, control.per_level)
    assert np.count_nonzero(ratio < 1) >= 14, ratio
