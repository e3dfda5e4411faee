"""``loracli convert``: reference checkpoints to loracli checkpoints, without running their code."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from loracli.cli.common import handle_errors
from loracli.errors import UserError

_IDDPM = "improved-diffusion: "


def _legacy(kebab: str) -> Any:
    """The hidden ``--snake_case`` spelling that ``convert`` took before every flag was ``--kebab-case``."""
    return typer.Option("--" + kebab[2:].replace("-", "_"), hidden=True)


def _either(kebab: str, value: Any, old: Any) -> Any:
    """The value of ``--kebab-case`` or of its hidden ``--snake_case`` spelling (both: they must agree)."""
    if value is not None and old is not None and value != old:
        raise UserError(f"{kebab} is given twice with different values ({value} and {old}); give it once.")
    return value if value is not None else old


def output_path(src: Path, dst: Path) -> Path:
    """``dst``, or ``dst/<src name>.safetensors`` when ``dst`` is a folder (as ``cp`` does); never ``src``."""
    if dst.is_dir():
        dst = dst / f"{src.stem}.safetensors"
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise UserError(f"Converting '{src}' to '{dst}' would overwrite the source; give another DST.")
    return dst


@handle_errors
def command(
    src: Annotated[Path, typer.Argument(help="EDM network-snapshot .pkl / training-state .pt, improved-diffusion .pt, loracli .safetensors, or (with loracli-diffusers) a diffusers model or pipeline folder.")],
    dst: Annotated[Path, typer.Argument(help="Output loracli checkpoint (.safetensors), or an existing folder (the file is then named after SRC).")],
    cond: Annotated[Optional[str], typer.Option("--cond", help="Wrap the attention with this conditioning, e.g. uc-lora.")] = None,
    lora_rank: Annotated[Optional[int], typer.Option("--lora-rank", help="LoRA rank r (with --cond).")] = None,
    bases: Annotated[Optional[int], typer.Option("--bases", help="Number of LoRA bases m (with --cond).")] = None,
    key: Annotated[Optional[str], typer.Option("--key", help="EDM pickle entry holding the network (default: ema, else net).")] = None,
    num_heads: Annotated[Optional[int], typer.Option("--num-heads", help=_IDDPM + "attention heads (default 4).")] = None,
    num_heads_upsample: Annotated[Optional[int], typer.Option("--num-heads-upsample", help=_IDDPM + "heads in the upsampling path (default: --num-heads).")] = None,
    diffusion_steps: Annotated[Optional[int], typer.Option("--diffusion-steps", help=_IDDPM + "diffusion steps T (default 4000).")] = None,
    noise_schedule: Annotated[Optional[str], typer.Option("--noise-schedule", help=_IDDPM + "linear or cosine (default cosine).")] = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", help=_IDDPM + "resolution, when channel_mult does not imply it.")] = None,
    rescale_timesteps: Annotated[Optional[str], typer.Option("--rescale-timesteps", help=_IDDPM + "True (default) or False, as the run was trained.")] = None,
    mlp: Annotated[Optional[str], typer.Option("--mlp", help="UC-LoRA omega-MLP widths, e.g. 128,64 (with --cond).")] = None,
    allow_nonfinite: Annotated[bool, typer.Option("--allow-nonfinite", help="Convert even if weights hold NaN or Inf (for debugging a broken run).")] = False,
    num_heads_: Annotated[Optional[int], _legacy("--num-heads")] = None,
    num_heads_upsample_: Annotated[Optional[int], _legacy("--num-heads-upsample")] = None,
    diffusion_steps_: Annotated[Optional[int], _legacy("--diffusion-steps")] = None,
    noise_schedule_: Annotated[Optional[str], _legacy("--noise-schedule")] = None,
    image_size_: Annotated[Optional[int], _legacy("--image-size")] = None,
    rescale_timesteps_: Annotated[Optional[str], _legacy("--rescale-timesteps")] = None,
) -> None:
    """Convert a checkpoint of the reference code into a loracli checkpoint.

    EDM pickles and torch .pt files are read by loracli's own bounded reader and a restricted unpickler: the
    code they embed is never run, and a file naming anything beyond network data, or built to exhaust the
    reader, is refused (see docs/security.md). The improved-diffusion flags also take their older underscore
    spellings. An existing folder as DST receives SRC's name with a .safetensors suffix (the last example
    writes converted/network-snapshot-200000.safetensors).

    Examples:

      loracli convert edm-cifar10-32x32-uncond-vp.pkl edm-uncond.safetensors

      loracli convert network-snapshot-200000.pkl edm-uclora.safetensors --cond uc-lora

      loracli convert ema_0.9999_500000.pt iddpm-cifar10.safetensors --num-heads 4

      loracli convert edm-uncond.safetensors edm-uncond-uclora.safetensors --cond uc-lora

      loracli convert network-snapshot-200000.pkl converted/
      loracli convert ddpm-cifar10-32/ ddpm-cifar10-timelora.safetensors --cond time-lora
    """
    from loracli.io.convert.base import convert_model, save_converted

    num_heads = _either("--num-heads", num_heads, num_heads_)
    num_heads_upsample = _either("--num-heads-upsample", num_heads_upsample, num_heads_upsample_)
    diffusion_steps = _either("--diffusion-steps", diffusion_steps, diffusion_steps_)
    noise_schedule = _either("--noise-schedule", noise_schedule, noise_schedule_)
    image_size = _either("--image-size", image_size, image_size_)
    rescale_timesteps = _either("--rescale-timesteps", rescale_timesteps, rescale_timesteps_)
    if (lora_rank is not None or bases is not None or mlp is not None) and not cond:
        raise UserError("--lora-rank, --bases and --mlp shape added conditioning; give it with --cond (e.g. --cond uc-lora).")
    rescale = None
    if rescale_timesteps is not None:
        if rescale_timesteps.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise UserError(f"--rescale-timesteps takes True or False, not '{rescale_timesteps}'.")
        rescale = rescale_timesteps.lower() in ("true", "1", "yes")
    dst = output_path(src, dst)
    model = convert_model(src, cond, allow_nonfinite=allow_nonfinite, lora_rank=lora_rank, bases=bases, key=key,
                          num_heads=num_heads, num_heads_upsample=num_heads_upsample,
                          diffusion_steps=diffusion_steps, noise_schedule=noise_schedule, image_size=image_size,
                          rescale_timesteps=rescale, mlp=mlp)
    save_converted(model, dst)
    config = model.config
    preset = f"preset {config['preset']}" if config.get("preset") else "no preset"
    conds = "+".join(config["cond"]) or "none"
    params = sum(p.numel() for p in model.parameters())
    typer.echo(f"Wrote {dst} ({config['model']}, {preset}, cond {conds}, {params:,} parameters).")
