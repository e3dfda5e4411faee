"""Converting lthilnklover/diffusion_lora snapshots (FORMATS §3) into loracli uc-lora checkpoints.

The fixture comes from tests/fixtures/make_diffusion_lora_fixtures.py: a tiny EDM net built and LoRA-injected
by the official code with non-zero adapters, pickled as its training loop does, and its outputs.
"""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import loracli
from loracli.conditioning.inject import lora_projections
from loracli.errors import UserError
from loracli.io.convert import convert, convert_model
from loracli.io.convert.base import detect_format
from loracli.io.convert.unpickle import load_file, state_dict

FIXTURES = Path(__file__).parent / "fixtures" / "diffusion_lora"
SNAPSHOT = FIXTURES / "network-snapshot-000002.pkl"


def reference():
    f = np.load(FIXTURES / "outputs.npz")
    inputs = (torch.from_numpy(f["x"]), torch.from_numpy(f["sigma"]), torch.from_numpy(f["class_labels"]))
    return inputs, torch.from_numpy(f["augment_labels"]), torch.from_numpy(f["denoised"])


def run(model):
    inputs, augment_labels, _ = reference()
    with torch.no_grad():
        return model(*inputs, augment_labels=augment_labels)


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def converted():
    return convert_model(SNAPSHOT)


def test_detected_ahead_of_plain_edm_pickles(tmp_path):
    assert detect_format(SNAPSHOT) == "diffusion-lora-pickle"
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"ema": None}, protocol=4))
    assert detect_format(plain) == "edm-pickle"


def test_converted_network_reproduces_the_official_outputs(converted):
    _, _, expected = reference()
    assert relative_error(run(converted), expected) < 1e-5


def test_the_adapters_matter_for_those_outputs(converted):
    _, _, expected = reference()
    without = convert_model(SNAPSHOT)
    with torch.no_grad():
        for layer in lora_projections(without.net).values():
            layer.adapters["uc_lora"].up.zero_()
            layer.adapters["uc_lora"].bias.zero_()
    assert relative_error(run(without), expected) > 1e-3


def test_config_and_tensor_mapping(converted):
    assert converted.config["model"] == "edm" and converted.config["cond"] == ["uc-lora"]
    assert converted.config["cond_options"]["uc-lora"] == {"lora_rank": 2, "bases": 3, "mlp": [16, 8]}
    assert converted.config["model_config"]["label_dim"] == 4
    official = state_dict(load_file(SNAPSHOT, inert_classes={"training.lora.LoraInjectedConv"})["ema"])
    ours = converted.state_dict()
    site = "model.enc.4x4_block0.qkv"
    # The name clash: the official `qkv.bias` is the LoRA bias, `qkv.conv.bias` the convolution's.
    assert torch.equal(ours[f"net.{site}.adapters.uc_lora.bias"], official[f"{site}.bias"])
    assert torch.equal(ours[f"net.{site}.base_layer.bias"], official[f"{site}.conv.bias"])
    assert torch.equal(ours[f"net.{site}.adapters.uc_lora.down"], official[f"{site}.lora_down.weight"][:, :, 0, 0])
    assert torch.equal(ours[f"net.{site}.adapters.uc_lora.omega.mlp.1.1.weight"],
                       official[f"{site}.comp_weights.1.1.weight"])
    adapted = {k.rsplit(".", 2)[0] for k in official if k.endswith("lora_up.weight")}
    assert set(lora_projections(converted.net)) == adapted


def test_converted_checkpoint_round_trips_with_provenance(tmp_path, cli):
    path = convert(SNAPSHOT, tmp_path / "lora.safetensors")
    loaded = loracli.load(path)
    _, _, expected = reference()
    assert relative_error(run(loaded), expected) < 1e-5
    source = loaded.checkpoint["extra"]["converted_from"]
    assert source["format"] == "diffusion-lora-pickle" and source["lora_layers"] == 6 and source["ema"] is True
    result = cli("info", path)
    assert result.exit_code == 0
    assert "diffusion-lora-pickle" in result.output and "uc-lora" in result.output


def test_a_malicious_pickle_in_this_format_is_refused(tmp_path, monkeypatch):
    sentinel = tmp_path / "pwned"

    class LoraInjectedConv:  # pickled by reference as training.lora.LoraInjectedConv, like the real one
        pass

    LoraInjectedConv.__module__, LoraInjectedConv.__qualname__ = "training.lora", "LoraInjectedConv"
    lora = types.ModuleType("training.lora")
    lora.LoraInjectedConv = LoraInjectedConv
    monkeypatch.setitem(sys.modules, "training", types.ModuleType("training"))
    monkeypatch.setitem(sys.modules, "training.lora", lora)

    class Payload:
        def __reduce__(self):
            import os

            return os.system, (f"touch {sentinel}",)

    evil = tmp_path / "network-snapshot-000000.pkl"
    evil.write_bytes(pickle.dumps({"ema": LoraInjectedConv(), "loss_fn": Payload()}, protocol=4))
    assert detect_format(evil) == "diffusion-lora-pickle"
    with pytest.raises(UserError, match="system.*refused before anything from the file ran"):
        convert_model(evil)
    assert not sentinel.exists()


def test_a_truncated_snapshot_is_a_user_error(tmp_path):
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(SNAPSHOT.read_bytes()[: SNAPSHOT.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        convert_model(cut)
