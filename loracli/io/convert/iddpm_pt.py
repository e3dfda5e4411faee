"""improved-diffusion ``.pt`` state dicts (``model*.pt``, ``ema_<rate>_*.pt``) as a conversion source.

The files hold only a state dict of tensors (train_util.py's ``torch.save``), read by loracli's bounded
reader of torch files (``torch_archive``) with the restricted unpickler: nothing from the file can run.
They store no configuration, so it is read back from the tensor shapes -- ``model_channels``, ``channel_mult``,
``num_res_blocks``, where attention sits, ``learn_sigma``, ``label_dim``, ``use_scale_shift_norm``, image
channels -- and the rest comes from options:

- ``image_size``: not in the shapes; by default taken from ``channel_mult`` as improved-diffusion's
  ``create_model`` pairs them (1,2,2,2: 32; 1,2,3,4: 64; 1,1,2,2,4,4: 256; and guided-diffusion's 1,1,2,3,4: 128).
- ``num_heads`` (default 4) and ``num_heads_upsample`` (default: ``num_heads``), improved-diffusion's defaults.
- ``diffusion_steps`` (default 4000) and ``noise_schedule`` (default cosine): the paper's IDDPM setting and that
  of every released improved-diffusion checkpoint, not the reference script's 1000/linear defaults.
- ``rescale_timesteps`` (default True, the reference's default) and ``dropout`` (the matched preset's, else 0).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from loracli.diffusion.gaussian import check_schedule
from loracli.errors import UserError
from loracli.io.checkpoint import describe_key_mismatch
from loracli.io.convert.base import ForeignCheckpoint, file_sha256
from loracli.io.convert.torch_archive import read_torch_file, torch_zip_pickle
from loracli.io.convert.unpickle import ForbiddenGlobal, refusal
from loracli.models.iddpm import SPEC, IDDPMUNet

FORMAT = "iddpm-pt"
# The first bytes of a legacy (pre-zip) torch.save file: the pickled magic number 0x1950a86a20f9469cfc6c.
_LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[:-1]
_ZIP_MAGIC = b"PK\x03\x04"
_SIGNATURE_KEYS = ("time_embed.0.weight", "input_blocks.0.0.weight", "out.2.weight")
# channel_mult -> image size, as improved-diffusion's (and guided-diffusion's) create_model pair them.
_RESOLUTION_OF_MULT = {(1, 2, 2, 2): 32, (1, 2, 3, 4): 64, (1, 1, 2, 3, 4): 128, (1, 1, 2, 2, 4, 4): 256}


def detect(path: Path) -> bool:
    """A torch-serialised file (zip or legacy format); ``read`` then says whether it is a usable state dict."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            try:
                torch_zip_pickle(archive)
            except pickle.UnpicklingError:
                return False
        return True
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    return head == _LEGACY_MAGIC or head.startswith(_ZIP_MAGIC)  # a cut-off torch zip: read() reports it


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The file's state dict, or a UserError saying what the file is instead."""
    try:
        obj = read_torch_file(path)
    except ForbiddenGlobal:
        raise UserError(f"'{path}' holds pickled Python objects, not a plain state dict of tensors; loracli reads "
                        "improved-diffusion's model*.pt and ema_*.pt files (for NVlabs/edm, convert the "
                        "network-snapshot .pkl instead); nothing from the file ran.") from None
    except Exception as exc:  # noqa: BLE001 -- whatever a hostile file makes the reader raise is one sentence
        raise refusal(path, exc) from None
    if isinstance(obj, Mapping) and {"state", "param_groups"} <= set(obj):
        raise UserError(f"'{path}' is an optimizer state (improved-diffusion's opt*.pt), not a network; convert the "
                        "model*.pt or ema_<rate>_*.pt file of the same step.")
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"'{path}' is not a state dict of tensors; expected an improved-diffusion model*.pt or "
                        "ema_*.pt file.")
    missing = [k for k in _SIGNATURE_KEYS if k not in obj]
    if missing:
        found = ", ".join(list(obj)[:5]) + (", ..." if len(obj) > 5 else "")
        raise UserError(f"'{path}' is not an improved-diffusion UNetModel state dict: expected keys "
                        f"{', '.join(_SIGNATURE_KEYS)}, found {found or 'no tensors'}.")
    return {k: v.float() if v.is_floating_point() else v for k, v in obj.items()}


def infer_architecture(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Every setting the tensor shapes determine; attention as downsampling rates (``attention_ds``)."""
    model_channels, img_channels = sd["input_blocks.0.0.weight"].shape[:2]
    n_input = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"input_blocks\.(\d+)\.", k)))
    levels: list[list[int]] = [[]]
    for i in range(1, n_input):
        if f"input_blocks.{i}.0.op.weight" in sd:
            levels.append([])
        else:
            levels[-1].append(i)
    num_res_blocks = len(levels[0])
    if num_res_blocks == 0 or any(len(blocks) != num_res_blocks for blocks in levels):
        raise ValueError("levels hold different numbers of ResBlocks")
    channel_mult, attention_ds = [], []
    for level, blocks in enumerate(levels):
        width = sd[f"input_blocks.{blocks[0]}.0.in_layers.2.weight"].shape[0]
        if width % model_channels:
            raise ValueError(f"level {level} has {width} channels, not a multiple of {model_channels}")
        channel_mult.append(width // model_channels)
        if f"input_blocks.{blocks[0]}.1.qkv.weight" in sd:
            attention_ds.append(2**level)
    emb_rows = sd[f"input_blocks.{levels[0][0]}.0.emb_layers.1.weight"].shape[0]
    out_channels = sd["out.2.weight"].shape[0]
    if out_channels not in (img_channels, 2 * img_channels):
        raise ValueError(f"the output has {out_channels} channels for {img_channels}-channel images")
    return {
        "img_channels": int(img_channels),
        "model_channels": int(model_channels),
        "channel_mult": channel_mult,
        "num_res_blocks": num_res_blocks,
        "attention_ds": attention_ds,
        "use_scale_shift_norm": emb_rows == 2 * model_channels * channel_mult[0],
        "learn_sigma": out_channels == 2 * img_channels,
        "label_dim": int(sd["label_emb.weight"].shape[0]) if "label_emb.weight" in sd else 0,
    }


def _check_option(path: Path, name: str, given: Any, found: Any) -> None:
    if given is not None and bool(given) != bool(found):
        raise UserError(f"'{path}' has {name}={bool(found)} (read from its tensor shapes), but {name}={given} "
                        "was asked for; drop the option.")


def matching_preset(config: Mapping[str, Any]) -> str | None:
    """The iddpm preset with this architecture and diffusion (label_dim and dropout may differ), if any."""
    free = {"label_dim", "dropout", "scale_shift"}
    for name, preset in SPEC.presets.items():
        wanted = {k: v for k, v in preset.config.items() if k not in free}
        if all(config.get(k) == v for k, v in wanted.items()):
            return name
    return None


def _check_fit(path: Path, config: Mapping[str, Any], sd: Mapping[str, torch.Tensor]) -> None:
    """Refuse a file whose keys or shapes differ from those of the network its shapes describe."""
    try:
        with torch.device("meta"):
            own = IDDPMUNet(**config).state_dict()
    except ValueError as exc:  # e.g. widths GroupNorm32's 32 groups cannot split
        raise UserError(f"'{path}' describes a network improved-diffusion cannot build: {exc}.") from None
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        detail = describe_key_mismatch(missing, unexpected)
        if shapes:
            detail += ("; " if detail else "") + f"shape mismatch {len(shapes)} ({', '.join(shapes[:4])})"
        raise UserError(f"'{path}' does not fit an improved-diffusion UNetModel with the settings its shapes "
                        f"imply: {detail}.")


def _image_size(path: Path, mult: tuple[int, ...], image_size: int | None) -> int:
    if image_size is None:
        if mult not in _RESOLUTION_OF_MULT:
            raise UserError(f"'{path}' has channel_mult {','.join(map(str, mult))}, which improved-diffusion uses for "
                            "no standard image size; pass the size it was trained at (image_size, --image-size).")
        return _RESOLUTION_OF_MULT[mult]
    if int(image_size) % 2 ** (len(mult) - 1):
        raise UserError(f"Image size {image_size} cannot be halved {len(mult) - 1} times as channel_mult needs.")
    return int(image_size)


def _heads(path: Path, widths: set[int], num_heads: int | None, num_heads_upsample: int | None) -> tuple[int, int]:
    """``(num_heads, num_heads_upsample)``, improved-diffusion's defaults filled in, checked against the widths."""
    heads = 4 if num_heads is None else int(num_heads)
    heads_up = heads if num_heads_upsample in (None, -1) else int(num_heads_upsample)
    bad = sorted(w for w in widths for h in {heads, heads_up} if h < 1 or w % h)
    if bad:
        raise UserError(f"{heads} / {heads_up} attention heads do not divide the {bad[0]} channels of '{path}'; "
                        "pass num_heads (improved-diffusion's default is 4).")
    return heads, heads_up


def read(path: Path, num_heads: int | None = None, num_heads_upsample: int | None = None,
         diffusion_steps: int | None = None, noise_schedule: str | None = None, learn_sigma: bool | None = None,
         class_cond: bool | None = None, image_size: int | None = None, rescale_timesteps: bool | None = None,
         dropout: float | None = None) -> ForeignCheckpoint:
    """Read an improved-diffusion state dict into an ``iddpm`` network description (see the module docstring)."""
    path = Path(path)
    sd = _load_tensors(path)
    try:
        arch = infer_architecture(sd)
    except (KeyError, ValueError) as exc:
        raise UserError(f"'{path}' does not have improved-diffusion's UNetModel layout ({exc}).") from None
    _check_option(path, "learn_sigma", learn_sigma, arch["learn_sigma"])
    _check_option(path, "class_cond", class_cond, arch["label_dim"])
    if diffusion_steps is not None and int(diffusion_steps) < 1:
        raise UserError("diffusion_steps must be a positive number of timesteps.")
    mult = tuple(arch["channel_mult"])
    size = _image_size(path, mult, image_size)
    heads, heads_up = _heads(path, {arch["model_channels"] * m for m in mult}, num_heads, num_heads_upsample)
    config: dict[str, Any] = {
        "img_resolution": size,
        "img_channels": arch["img_channels"],
        "label_dim": arch["label_dim"],
        "model_channels": arch["model_channels"],
        "channel_mult": list(mult),
        "num_res_blocks": arch["num_res_blocks"],
        "attn_resolutions": [size // ds for ds in arch["attention_ds"]],
        "num_heads": heads,
        "num_heads_upsample": None if heads_up == heads else heads_up,
        "dropout": 0.0,
        "use_scale_shift_norm": arch["use_scale_shift_norm"],
        "learn_sigma": arch["learn_sigma"],
        "diffusion_steps": 4000 if diffusion_steps is None else int(diffusion_steps),
        "noise_schedule": check_schedule(noise_schedule or "cosine"),
        "rescale_timesteps": True if rescale_timesteps is None else bool(rescale_timesteps),
        "scale_shift": True,
    }
    preset = matching_preset(config)
    if dropout is not None or preset is not None:
        config["dropout"] = float(dropout) if dropout is not None else SPEC.presets[preset].config["dropout"]
    _check_fit(path, config, sd)
    ema = re.match(r"ema_(\d+(?:\.\d+)?)_", path.name)
    source = {"file": path.name, "format": FORMAT, "sha256": file_sha256(path),
              "ema_rate": float(ema.group(1)) if ema else None}
    state = {f"net.{k}": v for k, v in sd.items()}  # the keys of the ConditionedModel that holds the network
    return ForeignCheckpoint(model="iddpm", model_config=config, state_dict=state, preset=preset, source=source,
                             ema=ema is not None)
