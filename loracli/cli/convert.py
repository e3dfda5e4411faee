"""``loracli convert``: reference checkpoints to loracli checkpoints, without running their code."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from loracli.cli.common import handle_errors
from loracli.errors import UserError


@handle_errors
def command(
    src: Annotated[Path, typer.Argument(help="EDM network-snapshot .pkl / training-state .pt, improved-diffusion .pt, loracli .safetensors, or (with loracli-diffusers) a diffusers model or pipeline folder.")],
    dst: Annotated[Path, typer.Argument(help="Output loracli checkpoint (.safetensors).")],
    cond: Annotated[Optional[str], typer.Option("--cond", help="Wrap the attention with this conditioning, e.g. uc-lora.")] = None,
    lora_rank: Annotated[Optional[int], typer.Option("--lora-rank", help="LoRA rank r (with --cond).")] = None,
    bases: Annotated[Optional[int], typer.Option("--bases", help="Number of LoRA bases m (with --cond).")] = None,
    key: Annotated[Optional[str], typer.Option("--key", help="EDM pickle entry holding the network (default: ema, else net).")] = None,
    num_heads: Annotated[Optional[int], typer.Option("--num_heads", help="improved-diffusion: attention heads (default 4).")] = None,
    num_heads_upsample: Annotated[Optional[int], typer.Option("--num_heads_upsample", help="improved-diffusion: heads in the upsampling path (default: --num_heads).")] = None,
    diffusion_steps: Annotated[Optional[int], typer.Option("--diffusion_steps", help="improved-diffusion: diffusion steps T (default 4000).")] = None,
    noise_schedule: Annotated[Optional[str], typer.Option("--noise_schedule", help="improved-diffusion: linear or cosine (default cosine).")] = None,
    image_size: Annotated[Optional[int], typer.Option("--image_size", help="improved-diffusion: resolution, when channel_mult does not imply it.")] = None,
    rescale_timesteps: Annotated[Optional[str], typer.Option("--rescale_timesteps", help="improved-diffusion: True (default) or False, as the run was trained.")] = None,
    mlp: Annotated[Optional[str], typer.Option("--mlp", help="UC-LoRA omega-MLP widths, e.g. 128,64 (with --cond).")] = None,
) -> None:
    """Convert a checkpoint of the reference code into a loracli checkpoint.

    EDM pickles are read by a restricted unpickler: the code they embed is never run, and a file naming
    anything beyond network data is refused.

    Examples:

      loracli convert edm-cifar10-32x32-uncond-vp.pkl edm-uncond.safetensors

      loracli convert network-snapshot-200000.pkl edm-uclora.safetensors --cond uc-lora

      loracli convert ema_0.9999_500000.pt iddpm-cifar10.safetensors --num_heads 4

      loracli convert edm-uncond.safetensors edm-uncond-uclora.safetensors --cond uc-lora

      loracli convert ddpm-cifar10-32/ ddpm-cifar10-timelora.safetensors --cond time-lora
    """
    from loracli.io.convert.base import convert_model, save_converted

    if (lora_rank is not None or bases is not None or mlp is not None) and not cond:
        raise UserError("--lora-rank, --bases and --mlp shape added conditioning; give it with --cond (e.g. --cond uc-lora).")
    rescale = None
    if rescale_timesteps is not None:
        if rescale_timesteps.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise UserError(f"--rescale_timesteps takes True or False, not '{rescale_timesteps}'.")
        rescale = rescale_timesteps.lower() in ("true", "1", "yes")
    model = convert_model(src, cond, lora_rank=lora_rank, bases=bases, key=key, num_heads=num_heads,
                          num_heads_upsample=num_heads_upsample, diffusion_steps=diffusion_steps,
                          noise_schedule=noise_schedule, image_size=image_size, rescale_timesteps=rescale, mlp=mlp)
    save_converted(model, dst)
    config = model.config
    preset = f"preset {config['preset']}" if config.get("preset") else "no preset"
    conds = "+".join(config["cond"]) or "none"
    params = sum(p.numel() for p in model.parameters())
    typer.echo(f"Wrote {dst} ({config['model']}, {preset}, cond {conds}, {params:,} parameters).")
