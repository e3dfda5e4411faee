"""``loracli fid``: Frechet Inception Distance with clean-fid, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from loracli.cli.common import handle_errors, not_implemented


@handle_errors
def command(
    samples: Annotated[Path, typer.Argument(help="Folder of generated images (or a checkpoint to sample from).")],
    ref: Annotated[Optional[str], typer.Option("--ref", help="Reference: a registered name, an image folder or a statistics .npz.")] = None,
    weights: Annotated[Optional[Path], typer.Option("--weights", help="Inception weights (clean-fid's inception-2015-12-05.pt).")] = None,
    num: Annotated[Optional[int], typer.Option("--num", help="Number of images to use.")] = None,
) -> None:
    """Score generated images against reference statistics.

    Examples:

      loracli fid samples/

      loracli fid samples/ --ref cifar10-32x32.npz --weights inception-2015-12-05.pt
    """
    not_implemented("fid", "issue: sample and fid")
