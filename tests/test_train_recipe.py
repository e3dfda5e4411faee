"""Training recipes: every preset parses and holds the reference hyperparameters; layers override in order."""

from __future__ import annotations

import pytest

from loracli import registry
from loracli.train.recipe import CONFIG_DIR, load_recipe, merge, read_toml, resolve_duration
from loracli.errors import UserError

EDM_AUGMENT = dict(xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)


def test_every_recipe_parses_and_names_a_registered_model_and_preset():
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
    assert names == ["dit-cifar16", "dit-tiny", "edm-cifar10", "edm-ffhq64", "iddpm-cifar10", "iddpm-imagenet64",
                     "nano-default"]
    for name in names:
        model, preset = name.split("-", 1)
        read_toml(CONFIG_DIR / f"{name}.toml")  # unknown keys would raise
        assert preset in registry.get_model(model).presets
        resolve_duration(load_recipe(model, preset))


def test_edm_cifar10_is_the_reference_recipe():
    r = load_recipe("edm", "cifar10")
    t = r["train"]
    assert (t["loss"], t["batch"], t["lr"], t["betas"], t["eps"]) == ("edm", 512, 1e-3, [0.9, 0.999], 1e-8)
    assert (t["lr_rampup_kimg"], t["ema_halflife_kimg"], t["ema_rampup_ratio"]) == (10000, 500, 0.05)
    assert (t["kimg"], t["init_kimg"], t["snapshot_kimg"]) == (200000, 100000, 2500)
    assert r["network"] == {"dropout": 0.13, "augment_dim": 9}
    assert r["augment"] == {"p": 0.12, **EDM_AUGMENT}
    assert registry.get_model("edm").presets["cifar10"].conditions["uc-lora"]["bases"] == 18


def test_edm_ffhq64_differs_where_the_paper_says():
    r = load_recipe("edm", "ffhq64")
    assert (r["train"]["lr"], r["train"]["batch"]) == (2e-4, 256)
    assert r["network"]["dropout"] == 0.05 and r["augment"] == {"p": 0.15, **EDM_AUGMENT}
    assert (r["train"]["lr_rampup_kimg"], r["train"]["ema_halflife_kimg"]) == (10000, 500)
    assert registry.get_model("edm").presets["ffhq64"].conditions["uc-lora"]["bases"] == 20


@pytest.mark.parametrize("preset, dropout", [("cifar10", 0.3), ("imagenet64", 0.0)])
def test_iddpm_recipes(preset, dropout):
    r = load_recipe("iddpm", preset)
    t = r["train"]
    assert (t["loss"], t["batch"], t["lr"], t["ema_rate"], t["lr_rampup_kimg"]) == ("ddpm", 128, 1e-4, 0.9999, 0)
    assert t["ema_halflife_kimg"] is None and r["augment"] == {} and r["network"]["dropout"] == dropout
    network = registry.get_model("iddpm").presets[preset].config
    assert (network["diffusion_steps"], network["noise_schedule"], network["learn_sigma"]) == (4000, "cosine", True)


def test_layers_override_in_order(tmp_path):
    user = tmp_path / "mine.toml"
    user.write_text('cond = "uc-lora"\n[train]\nlr = 5e-4\nbatch = 64\n[augment]\np = 0.2\n')
    r = load_recipe("edm", "cifar10", user, {"train": {"batch": 32, "lr": None}, "augment": {"p": None}})
    assert (r["cond"], r["train"]["lr"], r["train"]["batch"]) == ("uc-lora", 5e-4, 32)
    assert r["augment"]["p"] == 0.2 and r["augment"]["xflip"] == 1e8  # tables merge key by key
    assert r["train"]["ema_halflife_kimg"] == 500  # untouched keys keep the preset's value


def test_durations_in_steps():
    r = resolve_duration(load_recipe("edm", "cifar10", overrides={"train": {"batch": 300, "kimg": 1.0}}))
    assert r["train"]["steps"] == 4  # ceil(1000 / 300)
    assert r["train"]["snapshot_every"] == 8334  # ceil(2500 kimg / 300)
    init = resolve_duration(load_recipe("edm", "cifar10", overrides={"init": "x.safetensors"}))
    assert init["train"]["steps"] == 100000 * 1000 // 512 + 1  # the drop-in length, 100 Mimg


def test_mistakes_are_user_errors(tmp_path):
    typo = tmp_path / "typo.toml"
    typo.write_text("[train]\nlearning_rate = 1\n")
    with pytest.raises(UserError, match="unknown setting 'train.learning_rate'"):
        load_recipe("nano", None, typo)
    other = tmp_path / "other.toml"
    other.write_text('model = "edm"\n')
    with pytest.raises(UserError, match="recipe for model 'edm', not 'nano'"):
        load_recipe("nano", None, other)
    with pytest.raises(UserError, match="no preset 'mnist'"):
        load_recipe("nano", "mnist")
    with pytest.raises(UserError, match="no training recipe for edm preset 'afhqv2-64'"):
        load_recipe("edm", "afhqv2-64")
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_recipe("nano", None, broken)


def test_a_length_on_the_command_line_wins():
    from loracli.train import with_length

    saved = resolve_duration(load_recipe("edm", "cifar10", overrides={"init": "x.safetensors"}))  # resumed drop-in
    layer = {"train": {"kimg": 1.024}}
    longer = resolve_duration(with_length(merge(saved, layer), layer))
    assert longer["train"]["steps"] == 2  # 1024 images at batch 512, not the drop-in's 100 Mimg
    layer = {"train": {"steps": 7}}
    assert resolve_duration(with_length(merge(saved, layer), layer))["train"]["steps"] == 7
