"""Reading diffusers folders for ``loracli convert`` (a ``loracli.converters`` format).

A *model folder* holds ``config.json`` (a UNet2DModel or a pixel-space DiTTransformer2DModel) and
``diffusion_pytorch_model.safetensors`` (or ``.bin``); a *pipeline folder* holds ``model_index.json``, the
network in ``unet/`` or ``transformer/`` and the noise process in ``scheduler/``
(``scheduler_config.json``). The scheduler's training process -- beta schedule, number of steps, prediction
type, variance type -- becomes the ddpm-family settings of the loracli network; a model folder without a
scheduler beside it gets diffusers' DDPMScheduler defaults (Ho et al.'s process), and says so in its
provenance. Nothing is downloaded and no code from the folder runs: ``.safetensors`` holds only tensors and a
``.bin`` is read by loracli's bounded torch-file reader (never ``torch.load``).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from loracli.errors import UserError
from loracli.io.convert.base import ForeignCheckpoint, file_sha256
from loracli_diffusers.export import export  # noqa: F401  (this format's writer, for `loracli export --diffusers`)

WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
CHECKPOINT_SUFFIXES = (".pkl", ".pt", ".pth", ".bin", ".safetensors", ".ckpt")
# diffusers' DDPMScheduler defaults (what a model folder without a scheduler is taken to be trained with).
SCHEDULER_DEFAULTS = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0001,
                      "beta_end": 0.02, "prediction_type": "epsilon", "variance_type": "fixed_small"}
VARIANCES = {"fixed_small": (False, "small"), "fixed_large": (False, "large"), "learned_range": (True, "small")}
# Attention parameter names of diffusers' first releases, which diffusers itself still renames on loading.
MODELS = {"UNet2DModel": "diffusers-unet", "DiTTransformer2DModel": "diffusers-dit"}
OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def detect(path: Path) -> bool:
    return path.is_dir() and ((path / "config.json").is_file() or (path / "model_index.json").is_file())


def hint(path: Path) -> str | None:
    """For a Hub id given instead of a folder: how to download it first."""
    text = str(path)
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) and not text.endswith(CHECKPOINT_SUFFIXES):
        folder = text.split("/")[1]
        return (f"No file or folder '{text}'; if it is a Hugging Face Hub id, loracli does not download: run "
                f"`huggingface-cli download {text} --local-dir {folder}`, then `loracli convert {folder} OUT.safetensors`.")
    return None


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"'{path}' is not readable JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise UserError(f"'{path}' does not hold a JSON object.")
    return data


def locate(path: Path) -> tuple[Path, Path | None]:
    """``(model folder, scheduler_config.json or None)`` of a model or pipeline folder."""
    if (path / "model_index.json").is_file():
        index = _json(path / "model_index.json")
        part = next((p for p in ("unet", "transformer") if p in index), None)
        if part is None:
            parts = ", ".join(k for k in index if not k.startswith("_")) or "none"
            raise UserError(f"The pipeline '{path}' has no 'unet' or 'transformer' (its parts: {parts}); "
                            "loracli-diffusers converts UNet2DModel and DiTTransformer2DModel pipelines.")
        if index.get("vae") is not None and index.get("vae") != [None, None]:
            raise UserError(f"The pipeline '{path}' works in a VAE's latent space; loracli runs pixel-space networks.")
        model, scheduler = path / part, path / "scheduler" / "scheduler_config.json"
    else:
        model = path
        scheduler = path.parent / "scheduler" / "scheduler_config.json"
        if not (path.parent / "model_index.json").is_file():
            scheduler = path / "scheduler_config.json"
    if not (model / "config.json").is_file():
        raise UserError(f"'{model}' has no config.json; pass a diffusers model or pipeline folder.")
    return model, scheduler if scheduler.is_file() else None


def process_settings(scheduler: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers scheduler config as loracli's ddpm process settings; refuses what loracli cannot run."""
    s = {**SCHEDULER_DEFAULTS, **{k: v for k, v in scheduler.items() if v is not None}}
    steps = int(s["num_train_timesteps"])
    if s.get("trained_betas") is not None or s.get("rescale_betas_zero_snr"):
        raise UserError("The scheduler uses its own betas (trained_betas or zero-SNR rescaling); loracli runs the "
                        "linear and squaredcos_cap_v2 schedules.")
    if s["beta_schedule"] == "linear":
        start, end = 0.0001 * 1000 / steps, 0.02 * 1000 / steps
        if not (math.isclose(s["beta_start"], start, rel_tol=1e-9) and math.isclose(s["beta_end"], end, rel_tol=1e-9)):
            raise UserError(f"The scheduler's linear betas run {s['beta_start']} .. {s['beta_end']}; loracli's linear "
                            f"schedule over {steps} steps runs {start:g} .. {end:g} (Ho et al.'s, scaled by 1000/T).")
        schedule = "linear"
    elif s["beta_schedule"] == "squaredcos_cap_v2":
        schedule = "cosine"
    else:
        raise UserError(f"loracli runs the linear and squaredcos_cap_v2 beta schedules, not '{s['beta_schedule']}'.")
    if s["prediction_type"] not in ("epsilon", "v_prediction"):
        raise UserError(f"loracli runs epsilon and v_prediction networks, not '{s['prediction_type']}' ones.")
    if s["variance_type"] not in VARIANCES:
        raise UserError(f"loracli runs the variance types {', '.join(VARIANCES)}, not '{s['variance_type']}'.")
    learn_sigma, fixed_variance = VARIANCES[s["variance_type"]]
    return {"diffusion_steps": steps, "noise_schedule": schedule, "learn_sigma": learn_sigma,
            "fixed_variance": fixed_variance, "prediction": s["prediction_type"]}


def model_name(config: Mapping[str, Any]) -> str:
    """The loracli model of a diffusers config.json: ``diffusers-unet`` or ``diffusers-dit``."""
    name = config.get("_class_name", "UNet2DModel")
    if name not in MODELS:
        raise UserError(f"The folder holds a {name}; loracli-diffusers converts {' and '.join(MODELS)}.")
    return MODELS[name]


def model_settings(config: Mapping[str, Any], process: Mapping[str, Any]) -> dict[str, Any]:
    """The builder settings of a UNet2DModel or DiTTransformer2DModel config.json and its process."""
    from loracli_diffusers.dit import check_dit_config
    from loracli_diffusers.unet import check_unet_config

    dit = model_name(config) == "diffusers-dit"
    size = config.get("sample_size")
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise UserError(f"The network is built for {size[0]}x{size[1]} images; loracli runs square images.")
        size = size[0]
    if not size:
        raise UserError("The UNet2DModel config states no sample_size (the image resolution).")
    channels = int(config.get("in_channels", 3))
    out = int(config.get("out_channels") or channels)
    if out != channels * (2 if process["learn_sigma"] else 1):
        raise UserError(f"The network outputs {out} channels for {channels}-channel images, which does not fit the "
                        "scheduler's variance type.")
    network = {"dit": check_dit_config(config)} if dit else {"unet": check_unet_config(config)}
    labels = config.get("num_embeds_ada_norm") if dit else config.get("num_class_embeds")
    return {**network, "img_resolution": int(size), "img_channels": channels, "label_dim": int(labels or 0),
            "scale_shift": True,
            "dropout": float(config.get("dropout", 0.0)), **process}  # dropout: what --init may retune


def read_weights(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """The folder's weights (safetensors, else a .bin through loracli's bounded torch-file reader), old names renamed."""
    found = [folder / name for name in WEIGHTS if (folder / name).is_file()]
    if not found:
        others = sorted(p.name for p in folder.glob("diffusion_pytorch_model*"))
        detail = f" (it has {', '.join(others)}: sharded or variant weights are not read)" if others else ""
        raise UserError(f"'{folder}' has no diffusion_pytorch_model.safetensors{detail}.")
    path = found[0]
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
        else:
            from loracli.io.convert.torch_archive import read_torch_file

            tensors = read_torch_file(path)  # loracli's bounded reader: torch.load has no limits on nesting
    except Exception as exc:  # a corrupt or hostile file: one sentence, nothing of it was run
        raise UserError(f"'{path}' could not be read as plain tensors: {exc}.") from None
    if not isinstance(tensors, Mapping) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise UserError(f"'{path}' is not a state dict of tensors.")
    return path, {_rename(k): v.float() if v.is_floating_point() else v for k, v in tensors.items()}


def _rename(key: str) -> str:
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in OLD_ATTENTION_NAMES and i > 0 and parts[i - 2:i - 1] == ["attentions"]:
            parts[i] = OLD_ATTENTION_NAMES[part]
    return ".".join(parts)


def _effective(unet: Mapping[str, Any]) -> dict[str, Any]:
    """A UNet2DModel config with every default filled in, as JSON (so lists and tuples compare equal)."""
    import inspect

    from diffusers import UNet2DModel

    defaults = {k: p.default for k, p in inspect.signature(UNet2DModel.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return json.loads(json.dumps({**defaults, **unet}))


def matching_preset(settings: Mapping[str, Any]) -> str | None:
    """The ``diffusers-unet`` preset of the same network and process (label_dim may differ), if any."""
    from loracli_diffusers.unet import SPEC

    if "unet" not in settings:
        return None
    for name, preset in SPEC.presets.items():
        wanted = {k: v for k, v in preset.config.items() if k != "unet"}
        if (all(settings.get(k) == v for k, v in wanted.items())
                and _effective(settings["unet"]) == _effective(preset.config["unet"])):
            return name
    return None


def read(path: Path) -> ForeignCheckpoint:
    folder, scheduler = locate(Path(path))
    process = process_settings(_json(scheduler) if scheduler else {})
    config = _json(folder / "config.json")
    model, settings = model_name(config), model_settings(config, process)
    weights, tensors = read_weights(folder)
    prefix = "net.dit." if model == "diffusers-dit" else "net.unet."
    return ForeignCheckpoint(
        model=model, model_config=settings, preset=matching_preset(settings),
        state_dict={prefix + k: v for k, v in tensors.items()},
        source={"file": Path(path).name, "format": "diffusers", "weights": str(weights.relative_to(path)),
                "sha256": file_sha256(weights),
                "scheduler": str(scheduler.relative_to(path)) if scheduler and scheduler.is_relative_to(path)
                else (str(scheduler) if scheduler else "none (DDPMScheduler defaults)")},
    )
