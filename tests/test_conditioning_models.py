"""Every model × variant through the shared contract tests of ``loracli.testing`` (tiny configurations)."""

from __future__ import annotations

import pytest
import torch

from loracli.build import create_model
from loracli.conditioning.inject import lora_projections
from loracli.testing import TINY_NANO, ConditionTesterMixin, ModelTesterMixin, example_inputs, perturb


class TestNanoModel(ModelTesterMixin):
    model, model_kwargs, label_dim = "nano", TINY_NANO, 3


class TestNanoTimeLoRA(ConditionTesterMixin):
    condition = "time-lora"


class TestNanoClassLoRA(ConditionTesterMixin):
    condition, label_dim = "class-lora", 3


class TestNanoUCLoRA(ConditionTesterMixin):
    condition, label_dim = "uc-lora", 3


class TestNanoOnlyLoRATimeClass(ConditionTesterMixin):
    condition, label_dim, only_lora = "time-lora+class-lora", 3, True

TINY_EDM = {"img_resolution": 8, "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4]}
TINY_IDDPM = {"img_resolution": 8, "model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1,
              "attn_resolutions": [4], "num_heads": 2, "diffusion_steps": 100}


class TestEDMModel(ModelTesterMixin):
    model, preset, model_kwargs, label_dim = "edm", "cifar10", TINY_EDM, 3


class TestEDMUCLoRA(ConditionTesterMixin):
    condition, model, preset, model_kwargs, label_dim = "uc-lora", "edm", "cifar10", TINY_EDM, 3


class TestEDMOnlyLoRAUCClass(ConditionTesterMixin):
    condition, model, preset, model_kwargs = "uc-lora+class-lora", "edm", "cifar10", TINY_EDM
    label_dim, only_lora = 3, True


class TestIDDPMModel(ModelTesterMixin):
    model, preset, model_kwargs, label_dim = "iddpm", "cifar10", TINY_IDDPM, 3


class TestIDDPMTimeClassLoRA(ConditionTesterMixin):
    condition, model, preset, model_kwargs, label_dim = "time-lora+class-lora", "iddpm", "cifar10", TINY_IDDPM, 3


class TestIDDPMOnlyLoRATimeClass(ConditionTesterMixin):
    condition, model, preset, model_kwargs = "time-lora+class-lora", "iddpm", "cifar10", TINY_IDDPM
    label_dim, only_lora = 3, True


class TestIDDPMUCLoRA(ConditionTesterMixin):
    condition, model, preset, model_kwargs, label_dim = "uc-lora", "iddpm", "cifar10", TINY_IDDPM, 3


@pytest.mark.parametrize("model,kwargs", [("nano", TINY_NANO), ("iddpm", TINY_IDDPM)])
def test_only_lora_network_takes_the_class_through_class_lora_alone(model, kwargs):
    torch.manual_seed(0)
    net = create_model(model, cond="time-lora+class-lora", label_dim=3, only_lora=True, **kwargs).eval()
    perturb(net.parameters())
    x, t, _ = example_inputs(net, batch=1)
    with torch.no_grad():
        a, b = net(x, t, torch.tensor([0])), net(x, t, torch.tensor([2]))
        assert not torch.allclose(a, b, atol=1e-4)
        for layer in lora_projections(net.net).values():
            layer.adapters["class_lora"].up.zero_()
        assert torch.equal(net(x, t, torch.tensor([0])), net(x, t, torch.tensor([2])))
