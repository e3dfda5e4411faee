"""``loracli info``: what a checkpoint holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loracli.cli.common import handle_errors, not_implemented


@handle_errors
def command(
    ckpt: Annotated[Path, typer.Argument(help="A loracli checkpoint (.safetensors).")],
) -> None:
    """Show a checkpoint's model, conditioning, adapted layers and parameter counts.

    Example:

      loracli info runs/nano/ckpt.safetensors
    """
    not_implemented("info", "issue: LoRA conditioning")
