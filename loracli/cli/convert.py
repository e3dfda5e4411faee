"""``loracli convert``: reference checkpoints to loracli checkpoints, without running their code."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from loracli.cli.common import handle_errors, not_implemented


@handle_errors
def command(
    src: Annotated[Path, typer.Argument(help="EDM network-snapshot .pkl, improved-diffusion .pt, or loracli .safetensors.")],
    dst: Annotated[Path, typer.Argument(help="Output loracli checkpoint (.safetensors).")],
    cond: Annotated[Optional[str], typer.Option("--cond", help="Wrap the attention with this conditioning, e.g. uc-lora.")] = None,
    lora_rank: Annotated[Optional[int], typer.Option("--lora-rank", help="LoRA rank r.")] = None,
    bases: Annotated[Optional[int], typer.Option("--bases", help="Number of LoRA bases m.")] = None,
) -> None:
    """Convert a checkpoint of the reference code into a loracli checkpoint.

    Examples:

      loracli convert edm-cifar10-32x32-uncond-vp.pkl edm-uncond.safetensors

      loracli convert edm-uncond.safetensors edm-uncond-uclora.safetensors --cond uc-lora
    """
    not_implemented("convert", "issue: base models and convert")
