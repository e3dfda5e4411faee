"""Writing a ``diffusers-unet`` network back as a diffusers DDPMPipeline folder (``loracli export --diffusers``).

Only what diffusers can run exports: no LoRA conditioning (diffusers' UNet2DModel has no adapters and no way to
feed them a timestep or class) and a time embedding (an ``--only-lora`` network has none). The folder is
written beside the target and renamed into place, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from loracli.errors import UserError


def check_exportable(model: Any) -> None:
    config = model.config
    if config["model"] != "diffusers-unet":
        raise UserError(f"Only diffusers-unet networks export to diffusers; this checkpoint holds a '{config['model']}'.")
    if config["cond"]:
        raise UserError(f"This network has LoRA conditioning ({'+'.join(config['cond'])}), which diffusers' "
                        "UNet2DModel cannot run; export a checkpoint without conditioning.")
    if config.get("only_lora"):
        raise UserError("This network has no time embedding (--only-lora), so diffusers' UNet2DModel cannot run it.")


def scheduler_config(model_config: dict[str, Any]) -> dict[str, Any]:
    """The DDPMScheduler settings of the network's process (what ``convert`` maps back)."""
    steps = int(model_config["diffusion_steps"])
    if model_config["learn_sigma"]:
        variance = "learned_range"
    else:
        variance = "fixed_small" if model_config.get("fixed_variance", "large") == "small" else "fixed_large"
    schedule = {"linear": {"beta_schedule": "linear", "beta_start": 0.0001 * 1000 / steps, "beta_end": 0.02 * 1000 / steps},
                "cosine": {"beta_schedule": "squaredcos_cap_v2"}}[model_config["noise_schedule"]]
    return {"num_train_timesteps": steps, **schedule, "variance_type": variance, "clip_sample": True,
            "prediction_type": model_config.get("prediction", "epsilon")}


def export(model: Any, out: str | os.PathLike) -> Path:
    """Write ``model`` (a loaded loracli checkpoint) as a DDPMPipeline folder at ``out``; returns ``out``."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    check_exportable(model)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"'{out}' already exists and is not an empty folder; pick a new folder.")
    source = model.net.unet
    unet = UNet2DModel.from_config(source.config)
    unet.load_state_dict(source.state_dict(), strict=True)
    pipeline = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**scheduler_config(model.config["model_config"])))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give the folder the mode a plain mkdir would
    try:
        pipeline.save_pretrained(tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out
