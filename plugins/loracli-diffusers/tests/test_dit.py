"""diffusers-dit: the loracli network computes diffusers' DiTTransformer2DModel; --only-lora drops adaLN-Zero."""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("diffusers", reason="needs diffusers and loracli-diffusers: pip install -e plugins/loracli-diffusers")
pytest.importorskip("loracli_diffusers", reason="needs loracli-diffusers: pip install -e plugins/loracli-diffusers")

import torch  # noqa: E402
from diffusers import DiTTransformer2DModel  # noqa: E402

import loracli  # noqa: E402
from loracli.conditioning.inject import lora_projections  # noqa: E402
from loracli.testing import ModelTesterMixin, assert_bit_equal, parameter_count, perturb  # noqa: E402
from loracli_diffusers.dit import TINY_DIT  # noqa: E402


class TestDiffusersDiT(ModelTesterMixin):
    model, preset, model_kwargs, label_dim = "diffusers-dit", "tiny", {}, 3


def test_fresh_network_computes_diffusers_exactly_and_lora_wraps_every_block():
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(sample_size=32, in_channels=3, out_channels=6, num_embeds_ada_norm=4, **TINY_DIT).eval()
    perturb(dit.parameters(), scale=0.1)
    model = loracli.create_model("diffusers-dit", label_dim=4).eval()
    model.net.dit.load_state_dict(dit.state_dict())
    model = loracli.build.add_conditions(model, "time-lora+class-lora+uc-lora")
    assert len(lora_projections(model.net)) == 4 * 2  # to_q, to_k, to_v, to_out.0 of both blocks
    x, t, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 417, 999]), torch.tensor([3, 0, 2])
    with torch.no_grad():
        assert_bit_equal(model(x, t, labels), dit(x, timestep=t, class_labels=labels).sample)


def test_only_lora_drops_adaln_zero_and_the_final_modulation():
    full, bare = (loracli.create_model("diffusers-dit", label_dim=4, only_lora=o) for o in (False, True))
    removed = {n for n, _ in full.named_parameters()} - {n for n, _ in bare.named_parameters()}
    assert removed and all(".norm1.emb." in n or ".norm1.linear." in n or ".proj_out_1." in n for n in removed)
    assert parameter_count(bare.parameters()) == parameter_count(full.parameters()) - sum(
        p.numel() for n, p in full.named_parameters() if n in removed)
    perturb(bare.parameters(), scale=0.1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # neither timestep nor class reach the bare network ...
        assert_bit_equal(bare(x, torch.tensor([5, 5]), torch.tensor([0, 1])), bare(x, torch.tensor([900, 900]), torch.tensor([2, 3])))
    lora = loracli.build.add_conditions(copy.deepcopy(bare), "time-lora+class-lora")
    perturb(lora.condition_parameters(), seed=4)
    with torch.no_grad():  # ... only LoRA does
        assert not torch.allclose(lora(x, torch.tensor([5, 5]), torch.tensor([0, 1])),
                                  lora(x, torch.tensor([5, 5]), torch.tensor([2, 3])))


def test_unconditional_dit_is_refused_with_a_sentence():
    with pytest.raises(loracli.UserError, match="class-conditional"):
        loracli.create_model("diffusers-dit")


def test_pixel_space_dit_pipeline_folder_converts_to_the_same_network(tmp_path):
    import json

    from diffusers import DDPMScheduler

    from loracli.io.convert import convert_model

    torch.manual_seed(1)
    dit = DiTTransformer2DModel(sample_size=32, in_channels=3, out_channels=6, num_embeds_ada_norm=5, **TINY_DIT).eval()
    perturb(dit.parameters(), scale=0.1)
    dit.save_pretrained(tmp_path / "transformer")
    DDPMScheduler(variance_type="learned_range").save_pretrained(tmp_path / "scheduler")
    index = {"_class_name": "DiTPipeline", "transformer": ["diffusers", "DiTTransformer2DModel"],
             "scheduler": ["diffusers", "DDPMScheduler"]}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    model = convert_model(tmp_path, cond="class-lora")
    assert model.config["model"] == "diffusers-dit" and model.config["model_config"]["learn_sigma"]
    assert model.label_dim == 5
    x, t, labels = torch.randn(2, 3, 32, 32), torch.tensor([3, 900]), torch.tensor([4, 0])
    with torch.no_grad():
        assert_bit_equal(model(x, t, labels), dit(x, timestep=t, class_labels=labels).sample)
    (tmp_path / "model_index.json").write_text(json.dumps({**index, "vae": ["diffusers", "AutoencoderKL"]}))
    with pytest.raises(loracli.UserError, match="latent space"):
        convert_model(tmp_path)
