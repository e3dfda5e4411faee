"""Turning a resolved recipe into the pieces a run needs: the data, the network, the objective, the EMA.

The network is built fresh from the model's preset, taken from a checkpoint (``--init``, the paper's drop-in
recipe: the pretrained network plus zero-initialised adapters) or rebuilt from a saved training state.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
from loracli import registry
from loracli.build import add_conditions, build_model, parse_cond, resolve_config
from loracli.data import ImageDataset, Mirrored, open_dataset
from loracli.data.augment import AugmentPipe
from loracli.diffusion.losses import LOSSES
from loracli.errors import UserError
from loracli.io.checkpoint import inspect_checkpoint, load_state, read_metadata, read_tensors
from loracli.train.ema import EMA
from loracli.train.objective import DDPMObjective, EDMObjective

# Settings that shape training only: with --init they are taken from the recipe, the rest from the checkpoint.
TRAINING_ONLY_NETWORK_KEYS = ("dropout", "label_dropout")


def init_config(path: str, model: str) -> dict[str, Any]:
    """The build config of the checkpoint given to ``--init``, which must hold a ``model`` network."""
    config = read_metadata(path)["config"]
    if config["model"] != model:
        raise UserError(f"'{path}' holds a '{config['model']}' network, not '{model}'.")
    return config


def data_resolution(recipe: Mapping[str, Any], built: Mapping[str, Any] | None = None) -> int | None:
    """The image size of the network (``built``: the build config of a resumed run), when its config states it."""
    if built is not None:
        return built["model_config"].get("img_resolution")
    if recipe["init"]:
        return init_config(recipe["init"], recipe["model"])["model_config"].get("img_resolution")
    spec = registry.get_model(recipe["model"])
    return {**spec.presets[recipe["preset"]].config, **recipe["network"]}.get("img_resolution")


def open_data(recipe: Mapping[str, Any], built: Mapping[str, Any] | None = None) -> ImageDataset:
    dataset = open_dataset(recipe["data"], data_resolution(recipe, built))
    return Mirrored(dataset) if recipe["train"]["xflip"] else dataset


def _check_cond_options(names: list[str], options: Mapping[str, Any]) -> None:
    known = {k for n in names for k in registry.get_condition(n).defaults}
    unknown = sorted(k for k, v in options.items() if v is not None and k not in known)
    if unknown:
        raise UserError(f"Option(s) {', '.join(unknown)} do not apply to conditioning '{'+'.join(names) or 'none'}'"
                        f" (its options: {', '.join(sorted(known)) or 'none'}).")


def resolve_label_dim(recipe: Mapping[str, Any], names: list[str], dataset: ImageDataset) -> int:
    """The recipe's label_dim, or the data's classes when a variant needs labels and none was given."""
    label_dim = recipe["label_dim"]
    if label_dim is None:
        needs_labels = any("labels" in registry.get_condition(n).needs for n in names)
        label_dim = dataset.label_dim if needs_labels else 0
    return int(label_dim)


def check_data_fits(model: Any, dataset: ImageDataset) -> None:
    """Refuse data the network cannot take: another image size, or too few classes/no labels."""
    net = model.net
    resolution = getattr(net, "img_resolution", dataset.resolution)
    if resolution != dataset.resolution:
        raise UserError(f"The data is {dataset.resolution}x{dataset.resolution} but the network is built for "
                        f"{resolution}x{resolution}; pick a matching --preset or resize the data.")
    if model.label_dim and not dataset.label_dim:
        raise UserError(f"The model is class-conditional (label_dim {model.label_dim}) but the data '{dataset.name}' "
                        "has no class labels; use labelled data or --label-dim 0.")
    if model.label_dim and dataset.label_dim > model.label_dim:
        raise UserError(f"The data has {dataset.label_dim} classes but the model takes {model.label_dim}; "
                        f"pass --label-dim {dataset.label_dim}.")


def build_network(recipe: Mapping[str, Any], dataset: ImageDataset) -> Any:
    """A fresh network (seeded by the recipe) or the ``--init`` checkpoint with the requested conditioning added."""
    names = parse_cond(recipe["cond"])
    _check_cond_options(names, recipe["cond_options"])
    torch.manual_seed(recipe["train"]["seed"])
    if recipe["init"]:
        model = _from_checkpoint(recipe, names, dataset)
    else:
        label_dim = resolve_label_dim(recipe, names, dataset)
        network = dict(recipe["network"])
        preset = registry.get_model(recipe["model"]).presets[recipe["preset"]].config
        if not augmenting(recipe) and "augment_dim" in {**preset, **network}:
            network["augment_dim"] = 0  # as EDM's train.py: augmentation labels only with augmentation
        config = resolve_config(recipe["model"], recipe["preset"], names, recipe["only_lora"], label_dim,
                                **network, **recipe["cond_options"])
        model = build_model(config, seed=recipe["train"]["seed"])
    check_data_fits(model, dataset)
    return model


def _from_checkpoint(recipe: Mapping[str, Any], names: list[str], dataset: ImageDataset) -> Any:
    path = recipe["init"]
    config = copy.deepcopy(init_config(path, recipe["model"]))
    if recipe["only_lora"] and not config.get("only_lora"):
        raise UserError("--only-lora removes scale-and-shift, which a pretrained network needs; "
                        "train an only-LoRA network from scratch instead of with --init.")
    label_dim = config["model_config"].get("label_dim", 0)
    if recipe["label_dim"] is not None and int(recipe["label_dim"]) != label_dim:
        raise UserError(f"'{path}' is built with label_dim {label_dim}; --label-dim cannot change it.")
    for key in TRAINING_ONLY_NETWORK_KEYS:
        if key in recipe["network"] and key in config["model_config"]:
            config["model_config"][key] = recipe["network"][key]
    inspect_checkpoint(path)  # header, config and tensor table checked before anything is built or read
    model = build_model(config)
    load_state(model, read_tensors(path), str(path))
    new = [n for n in names if n not in config["cond"]]
    if new:
        add_conditions(model, new, seed=recipe["train"]["seed"], **recipe["cond_options"])
    return model


def augmenting(recipe: Mapping[str, Any]) -> bool:
    return bool(recipe["augment"].get("p", 0))


def has_unused_inputs(model: Any, objective: Any) -> bool:
    """A network with augmentation-label inputs trained without augmentation leaves those weights unused
    (possible after --init); DistributedDataParallel must then look for unused parameters."""
    return bool(model.config["model_config"].get("augment_dim")) and getattr(objective, "augment", None) is None


def make_objective(recipe: Mapping[str, Any], model: Any) -> EDMObjective | DDPMObjective:
    """The family's loss with the recipe's settings; the augmentation pipe must match the network's inputs."""
    train, model_config = recipe["train"], model.config["model_config"]
    net = model.net
    shape = (getattr(net, "img_channels", 3), getattr(net, "img_resolution", 32), getattr(net, "img_resolution", 32))
    pipe = AugmentPipe.from_config(recipe["augment"]) if augmenting(recipe) else None
    loss = train["loss"]
    if model.family == "ddpm":
        if loss not in ("auto", "ddpm"):
            raise UserError(f"Loss '{loss}' is for edm-family networks; ddpm-family networks train with 'ddpm'.")
        if pipe is not None:
            raise UserError("The augmentation pipe conditions edm-family networks only; set augment p = 0.")
        from loracli.diffusion.gaussian import GaussianDiffusion

        return DDPMObjective(GaussianDiffusion.from_model_config(model_config), shape)
    if loss == "auto":
        loss = model_config.get("precond", "edm") if model_config.get("precond", "edm") in LOSSES else "edm"
    if loss not in LOSSES:
        raise UserError(f"Unknown loss '{loss}' for an edm-family network; use one of: {', '.join(LOSSES)}.")
    if pipe is not None and model_config.get("augment_dim", pipe.label_dim) != pipe.label_dim:
        raise UserError(f"The network takes {model_config.get('augment_dim')} augmentation labels but the pipe makes "
                        f"{pipe.label_dim}; set network augment_dim = {pipe.label_dim} or augment p = 0.")
    return EDMObjective(LOSSES[loss](), shape, pipe)


def make_ema(recipe: Mapping[str, Any], model: Any) -> EMA:
    train = recipe["train"]
    if train["ema_rate"] is not None:
        return EMA(model, train["batch"], rate=float(train["ema_rate"]))
    if train["ema_halflife_kimg"] is None:
        raise UserError("The recipe sets no EMA; give ema_halflife_kimg (EDM) or ema_rate (IDDPM).")
    ratio = train["ema_rampup_ratio"]
    return EMA(model, train["batch"], halflife_kimg=float(train["ema_halflife_kimg"]),
               rampup_ratio=None if ratio is None else float(ratio))
