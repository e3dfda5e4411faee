"""One optimisation step: what it trains (base and adapters, or adapters alone), and the drop-in start."""

from __future__ import annotations

import torch

import loracli
from loracli.train.loop import Trainer, make_loader
from train_tiny import TINY_NETWORK, tiny_recipe


def step_once(tmp_path, **layer) -> tuple[Trainer, dict[str, torch.Tensor]]:
    """One step from a network whose zero-initialised layers were given weights, as a pretrained one has (from
    scratch, a zero output layer blocks every other gradient in the first step)."""
    trainer = Trainer(tiny_recipe(**layer), tmp_path / "run")
    with torch.no_grad():
        for p in trainer.model.base_parameters():
            p.add_(0.05 * torch.randn_like(p))
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    batches = make_loader(trainer.dataset, trainer.recipe, trainer.process, trainer.micro_batch, 0)
    loss = trainer.train_step(batches)
    assert torch.isfinite(loss) and trainer.step == 1
    return trainer, before


def changed(trainer: Trainer, before: dict[str, torch.Tensor], params) -> list[bool]:
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    return [not torch.equal(p.detach(), before[names[id(p)]]) for p in params]


def test_one_step_trains_the_base_and_the_adapters(tmp_path):
    trainer, before = step_once(tmp_path)
    adapters = changed(trainer, before, trainer.model.condition_parameters())
    base = changed(trainer, before, trainer.model.base_parameters())
    assert adapters and any(adapters)  # the zero-initialised "up" weights get their first update
    assert any(base) and sum(base) > len(base) // 2
    # The EMA starts as a copy (EDM's ramp: beta 0 at step 0), so it follows the step exactly.
    for p, q in zip(trainer.model.parameters(), trainer.ema.model.parameters()):
        assert torch.equal(p, q)


def test_finetune_trains_only_the_adapters(tmp_path):
    trainer, before = step_once(tmp_path, finetune=True)
    assert any(changed(trainer, before, trainer.model.condition_parameters()))
    assert not any(changed(trainer, before, trainer.model.base_parameters()))
    assert all(not p.requires_grad for p in trainer.model.base_parameters())


def test_warm_up_makes_the_first_step_a_no_op(tmp_path):
    trainer, before = step_once(tmp_path, train={"lr_rampup_kimg": 1})
    assert not any(changed(trainer, before, trainer.model.parameters()))


def test_init_starts_from_the_checkpoint_with_zero_adapters(tmp_path):
    """The drop-in recipe: a pretrained network plus adapters that start at zero; the step count restarts."""
    torch.manual_seed(5)
    base = loracli.create_model("nano", **TINY_NETWORK)
    with torch.no_grad():  # a "trained" network: non-zero output layers
        for p in base.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ckpt = loracli.save(base, tmp_path / "base.safetensors", step=1234, ema=True)
    trainer = Trainer(tiny_recipe(init=str(ckpt)), tmp_path / "run")
    model = trainer.model
    assert model.config["cond"] == ["time-lora"] and trainer.step == 0
    assert any(True for _ in model.condition_parameters())
    assert torch.equal(model.net.conv_out.weight, base.net.conv_out.weight)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    with torch.no_grad():
        assert torch.equal(model.eval()(x, t), base.eval()(x, t))


def test_finetune_runs_the_frozen_base_without_dropout(tmp_path):
    """As the official code: a frozen base is evaluated (dropout off) while its adapters train; without
    --finetune the same network's dropout is on, so two passes differ."""
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    outputs = {}
    for finetune in (False, True):
        trainer, before = step_once(tmp_path / str(finetune), finetune=finetune, network={"dropout": 0.5})
        model = trainer.model
        assert model.training != finetune  # the root (base) module's mode
        assert all(m.training for m in model._condition_modules)
        with torch.no_grad():
            outputs[finetune] = [model(x, t) for _ in range(2)]
        if finetune:
            batches = make_loader(trainer.dataset, trainer.recipe, trainer.process, trainer.micro_batch, 1)
            trainer.train_step(batches)
            assert not any(changed(trainer, before, model.base_parameters()))
            assert any(changed(trainer, before, model.condition_parameters()))
            assert not any(m.training for n, m in model.named_modules() if ".adapters." not in f".{n}.")
    assert not torch.equal(*outputs[False])
    assert torch.equal(*outputs[True])
