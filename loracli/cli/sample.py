"""``loracli sample``: seed-exact image generation from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from loracli.cli.common import handle_errors, not_implemented


@handle_errors
def command(
    ckpt: Annotated[Path, typer.Argument(help="A loracli checkpoint (.safetensors).")],
    class_: Annotated[Optional[str], typer.Option("--class", help="Class index, or a mix like 3:0.5,5:0.5 (ClassLoRA).")] = None,
    seeds: Annotated[str, typer.Option("--seeds", help="Seeds, e.g. 0-63 or 1,5,9; image k comes from seed k.")] = "0-63",
    steps: Annotated[Optional[int], typer.Option("--steps", help="Sampler steps (default: the checkpoint's preset).")] = None,
    sampler: Annotated[Optional[str], typer.Option("--sampler", help="heun, euler (edm); ancestral, ddim (ddpm).")] = None,
    outdir: Annotated[Path, typer.Option("--outdir", help="Folder for the PNGs.")] = Path("samples"),
    batch: Annotated[int, typer.Option("--batch", help="Images per batch.")] = 64,
    grid: Annotated[bool, typer.Option("--grid/--no-grid", help="Also write grid.png of the first 64 images.")] = True,
) -> None:
    """Generate images, one PNG per seed (000003.png from seed 3).

    Examples:

      loracli sample runs/nano/ckpt.safetensors --seeds 0-63

      loracli sample edm-cifar10.safetensors --class 3 --seeds 0-49999 --outdir samples/
    """
    not_implemented("sample", "issue: sample and fid")
