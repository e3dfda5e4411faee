"""The edm family (EDM loss + augmentation pipe) and IDDPM (hybrid loss) through the training loop."""

from __future__ import annotations

import torch

from loracli.train.loop import Trainer, make_loader
from loracli.train.recipe import load_recipe, resolve_duration

TINY_EDM = {"img_resolution": 8, "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4]}
TINY_IDDPM = {"img_resolution": 8, "model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1,
              "attn_resolutions": [4], "num_heads": 2, "diffusion_steps": 100}


def trainer(tmp_path, model: str, network: dict, cond: str, **layer) -> Trainer:
    overrides = {"cond": cond, "label_dim": 10, "network": network,
                 "train": {"batch": 4, "steps": 1, "lr_rampup_kimg": 0}, "sample": {"images": 0}, **layer}
    return Trainer(resolve_duration(load_recipe(model, "cifar10", None, overrides)), tmp_path / model)


def capture_inputs(model) -> list[tuple]:
    """Record what the base network receives."""
    seen = []
    model.net.register_forward_pre_hook(lambda module, args, kwargs: seen.append((args, kwargs)), with_kwargs=True)
    return seen


def test_edm_trains_with_the_augmentation_labels_as_inputs(tmp_path):
    t = trainer(tmp_path, "edm", TINY_EDM, "uc-lora")
    assert t.model.config["model_config"]["augment_dim"] == 9 and t.objective.augment.label_dim == 9
    seen = capture_inputs(t.model)
    loss = t.train_step(make_loader(t.dataset, t.recipe, t.process, t.micro_batch, 0))
    (x, sigma, labels), kwargs = seen[0]
    assert kwargs["augment_labels"].shape == (4, 9) and labels.shape == (4, 10)
    assert sigma.shape == (4,) and (sigma > 0).all()
    assert 0.05 < loss.item() / 4 < 20  # EDM's weighting keeps the per-pixel loss near 1 at initialisation


def test_edm_without_augmentation_builds_no_augmentation_inputs(tmp_path):
    t = trainer(tmp_path, "edm", TINY_EDM, "none", augment={"p": 0})
    assert t.model.config["model_config"]["augment_dim"] == 0 and t.objective.augment is None


def test_iddpm_trains_with_the_hybrid_loss_at_uniform_timesteps(tmp_path):
    t = trainer(tmp_path, "iddpm", TINY_IDDPM, "time-lora+class-lora")
    seen = capture_inputs(t.model)
    images = torch.zeros(4, 3, 8, 8)
    draws = t.objective.draw(4, torch.Generator().manual_seed(0), torch.device("cpu"))
    loss = t.objective.loss(t.model, images, torch.tensor([0, 1, 2, 3]), draws)
    reference = t.objective.diffusion.training_losses(t.model, images, draws["t"], torch.tensor([0, 1, 2, 3]),
                                                      noise=draws["noise"])
    torch.testing.assert_close(loss, reference["mse"] + reference["vb"])  # hybrid: learned variances
    (x, timesteps, labels), _ = seen[0]
    assert timesteps.tolist() == draws["t"].tolist() and labels.shape == (4, 10)
    all_t = t.objective.draw(20_000, torch.Generator().manual_seed(1), torch.device("cpu"))["t"]
    assert all_t.min() == 0 and all_t.max() == 99 and abs(all_t.float().mean().item() - 49.5) < 1
