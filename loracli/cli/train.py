"""``loracli train``: the paper's training recipes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from loracli.cli.common import console, handle_errors, is_rank_zero, positive


def _path(value: Path | str | None) -> str | None:
    """Paths are stored absolute, so that a run resumes from any working folder."""
    return str(Path(value).expanduser().resolve()) if value is not None else None


@handle_errors
def command(
    model: Annotated[str, typer.Argument(help="Base model: nano, iddpm, edm (see `loracli models`).")],
    cond: Annotated[Optional[str], typer.Option("--cond", help="Conditioning variant(s), joined with +, e.g. time-lora+class-lora (default: none).")] = None,
    only_lora: Annotated[bool, typer.Option("--only-lora", help="Remove scale-and-shift; condition through attention LoRA alone.")] = False,
    preset: Annotated[Optional[str], typer.Option("--preset", help="Model preset; picks the recipe `configs/<model>-<preset>.toml`.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML file overriding the preset's recipe (same keys).")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Dataset: EDM zip, image folder or cifar-10-batches-py; default: built-in.")] = None,
    label_dim: Annotated[Optional[int], typer.Option("--label-dim", min=0, help="Classes of a class-conditional model, 0 for unconditional (default: 0, or the data's classes for class-lora).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Training length in optimiser steps.")] = None,
    kimg: Annotated[Optional[float], typer.Option("--kimg", callback=positive, help="Training length in thousands of images (above 0).")] = None,
    batch: Annotated[Optional[int], typer.Option("--batch", min=1, help="Global batch size (split over torchrun processes).")] = None,
    batch_gpu: Annotated[Optional[int], typer.Option("--batch-gpu", min=1, help="Micro-batch per process; gradients accumulate to --batch.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", callback=positive, help="Learning rate (above 0).")] = None,
    dropout: Annotated[Optional[float], typer.Option("--dropout", min=0, max=1, help="Dropout probability of the network.")] = None,
    augment: Annotated[Optional[float], typer.Option("--augment", min=0, max=1, help="Augmentation probability p of EDM's pipe (0: off; edm family).")] = None,
    outdir: Annotated[Optional[Path], typer.Option("--outdir", help="Run folder (default: `runs/<model>-<cond>`, numbered if taken).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue exactly from the run folder's latest state.")] = False,
    init: Annotated[Optional[Path], typer.Option("--init", help="Start from this loracli checkpoint: the paper's drop-in recipe (warm-up and EMA ramp restart).")] = None,
    finetune: Annotated[bool, typer.Option("--finetune", help="Freeze the base network (no gradients, dropout off); train only the adapters.")] = False,
    lora_rank: Annotated[Optional[int], typer.Option("--lora-rank", min=1, help="LoRA rank r (paper: 4).")] = None,
    bases: Annotated[Optional[int], typer.Option("--bases", min=1, help="Number of LoRA bases m.")] = None,
    mlp: Annotated[Optional[str], typer.Option("--mlp", help="UC-LoRA omega-MLP hidden widths, e.g. 128,64.")] = None,
    omega_init: Annotated[Optional[str], typer.Option("--omega-init", help="TimeLoRA omega-table initialisation (e.g. linear).")] = None,
    snapshot_every: Annotated[Optional[int], typer.Option("--snapshot-every", min=1, help="Steps between checkpoints, grids and plots (default: the recipe's).")] = None,
    log_every: Annotated[Optional[int], typer.Option("--log-every", min=1, help="Steps between progress and metrics updates.")] = None,
    grid: Annotated[Optional[int], typer.Option("--grid", min=0, help="Images in the sample grid of each snapshot; 0: none (default: the recipe's 64, fewer for a short run, so that the grid costs about a tenth of the training).")] = None,
    log: Annotated[Optional[str], typer.Option("--log", help="Also log to: tensorboard (event files beside metrics.jsonl; needs `pip install tensorboard`).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=0, help="DataLoader worker processes (default: 0 on CPU, up to 8 per GPU).")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="torch's CPU threads (default: $OMP_NUM_THREADS if set, else half the cores, 1 to 4; see docs/training.md).")] = None,
    precision: Annotated[Optional[str], typer.Option("--precision", help="bf16 or fp32 (default: bf16 on CUDA, fp32 on CPU).")] = None,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the network.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA when present, else the CPU), cpu or cuda.")] = "auto",
    seed: Annotated[Optional[int], typer.Option("--seed", min=0, help="Random seed (initialisation, data order, noise).")] = None,
) -> None:
    """Train a diffusion model, optionally with LoRA conditioning on its attention layers.

    The recipe is `configs/<model>-<preset>.toml` (the paper's hyperparameters); --config FILE.toml and the
    flags below override it. The run folder (default `runs/<model>-<cond>`, e.g. `runs/nano-time-lora`) gets
    config.json, metrics.jsonl, `snapshot-*.safetensors` (EMA weights), ckpt.safetensors (the newest),
    `grid-*.png` (one column per class for up to 16 classes: 60 images for 10), loss.png and
    state.safetensors (for --resume). Ctrl-C saves the state and stops; --resume continues.

    Examples:

      loracli train nano --cond time-lora+class-lora

      loracli train nano --cond time-lora --steps 50 --grid 0

      loracli train edm --preset cifar10 --cond uc-lora --data cifar10-32x32.zip

      loracli train edm --cond uc-lora --init edm-cifar10-uncond.safetensors --data cifar10-32x32.zip

      loracli train iddpm --preset cifar10 --cond time-lora+class-lora --label-dim 10 --only-lora

      torchrun --nproc_per_node 4 -m loracli train edm --preset cifar10 --cond uc-lora --data cifar10-32x32.zip
    """
    from loracli.errors import UserError
    from loracli.train import start_run

    if steps is not None and kimg is not None:
        raise UserError("Give the training length once: --steps or --kimg.")
    if init is not None and resume:
        raise UserError("--init starts a new run from a checkpoint and --resume continues one; give only one.")
    overrides: dict[str, Any] = {
        "cond": cond,
        "only_lora": only_lora or None,
        "label_dim": label_dim,
        "data": _path(data),
        "init": _path(init),
        "finetune": finetune or None,
        "network": {"dropout": dropout},
        "cond_options": {"lora_rank": lora_rank, "bases": bases, "mlp": mlp, "omega_init": omega_init},
        "augment": {"p": augment},
        "train": {"steps": steps, "kimg": kimg, "batch": batch, "batch_gpu": batch_gpu, "lr": lr, "seed": seed,
                  "snapshot_every": snapshot_every, "log_every": log_every, "workers": workers, "log": log,
                  "precision": precision, "compile": compile or None, "device": None if device == "auto" else device},
        "sample": {"images": grid, "fit_to_run": False if grid is not None else None},
    }
    show = is_rank_zero()
    result = start_run(model, preset, config, overrides, outdir, resume, console, show=show, threads=threads)
    if not show:
        return
    where = [f"checkpoint {result.checkpoint}"]
    if result.grid:
        where.append(f"samples {result.grid}")
    if result.plot:
        where.append(f"loss plot {result.plot}")
    state = "Interrupted; saved" if result.interrupted else "Done"
    hint = f" (continue with --resume --outdir {result.run_dir})" if result.interrupted else ""
    console.print(f"[bold green]{state}[/] at step {result.step}: {', '.join(where)}{hint}", highlight=False, soft_wrap=True)
    if result.interrupted:
        raise typer.Exit(130)  # saved cleanly, but not finished: scripts must not go on as if it were
