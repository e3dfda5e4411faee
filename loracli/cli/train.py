"""``loracli train``: the paper's training recipes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from loracli.cli.common import handle_errors, not_implemented


@handle_errors
def command(
    model: Annotated[str, typer.Argument(help="Base model: nano, iddpm, edm (see `loracli models`).")],
    cond: Annotated[str, typer.Option("--cond", help="Conditioning variant(s), joined with +, e.g. time-lora+class-lora.")] = "none",
    only_lora: Annotated[bool, typer.Option("--only-lora", help="Remove scale-and-shift; condition through attention LoRA alone.")] = False,
    preset: Annotated[Optional[str], typer.Option("--preset", help="Model/recipe preset, e.g. cifar10.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML file overriding the preset's recipe.")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Dataset: EDM zip, image folder or cifar-10-batches-py; default: built-in.")] = None,
    label_dim: Annotated[Optional[int], typer.Option("--label-dim", help="Number of classes for a class-conditional model (0: unconditional).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Training length in optimiser steps.")] = None,
    kimg: Annotated[Optional[float], typer.Option("--kimg", help="Training length in thousands of images.")] = None,
    batch: Annotated[Optional[int], typer.Option("--batch", help="Global batch size.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate.")] = None,
    outdir: Annotated[Optional[Path], typer.Option("--outdir", help="Run folder (default runs/<model>-<cond>).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue exactly from the run folder's latest state.")] = False,
    init: Annotated[Optional[Path], typer.Option("--init", help="Start from this checkpoint (the paper's drop-in recipe).")] = None,
    finetune: Annotated[bool, typer.Option("--finetune", help="Freeze the base network; train only the adapters.")] = False,
    lora_rank: Annotated[Optional[int], typer.Option("--lora-rank", help="LoRA rank r (paper: 4).")] = None,
    bases: Annotated[Optional[int], typer.Option("--bases", help="Number of LoRA bases m.")] = None,
    precision: Annotated[Optional[str], typer.Option("--precision", help="bf16 or fp32 (default: bf16 on CUDA, fp32 on CPU).")] = None,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the network.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed.")] = None,
) -> None:
    """Train a diffusion model, optionally with LoRA conditioning on its attention layers.

    Examples:

      loracli train nano --cond time-lora

      loracli train edm --preset cifar10 --cond uc-lora --data cifar10-32x32.zip

      loracli train iddpm --preset cifar10 --cond time-lora+class-lora --label-dim 10 --only-lora
    """
    not_implemented("train", "issue: train")
