"""``loracli export``: a loracli checkpoint written in another library's format (through its plugin)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from loracli.cli.common import handle_errors
from loracli.errors import UserError


@handle_errors
def command(
    checkpoint: Annotated[Path, typer.Argument(help="loracli checkpoint (.safetensors) to export.")],
    diffusers: Annotated[Optional[Path], typer.Option("--diffusers", help="Write a diffusers pipeline folder here (needs loracli-diffusers).")] = None,
) -> None:
    """Export a checkpoint to another library's format.

    `--diffusers OUT` writes a DDPMPipeline folder (model_index.json, unet/, scheduler/) that diffusers loads
    with `DDPMPipeline.from_pretrained(OUT)`. Only networks diffusers can run export: a diffusers-unet network
    without LoRA conditioning and with its time embedding (not --only-lora).

    Examples:

      loracli export ddpm-cifar10.safetensors --diffusers ddpm-cifar10-pipeline/

      loracli export runs/diffusers-unet-none/ckpt.safetensors --diffusers my-ddpm/
    """
    from loracli.io.checkpoint import load
    from loracli.io.convert.base import exporter

    if diffusers is None:
        raise UserError("Say which format to write, e.g. --diffusers OUT.")
    export = exporter("diffusers", "loracli-diffusers")
    model = load(checkpoint)
    export(model, diffusers)
    typer.echo(f"Wrote {diffusers} (diffusers DDPMPipeline from {checkpoint}).")
