"""``loracli fid``: Fréchet Inception Distance with clean-fid, offline, recorded so it can be compared."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from loracli.cli.common import console, handle_errors, is_rank_zero
from loracli.errors import UserError
from loracli.seeds import check_count, parse_int_list

DEFAULT_NUM = 50_000


def _workers(device: Any) -> int:
    """DataLoader workers for decoding and resizing: some on a GPU machine, none on the CPU (tests, laptops)."""
    return min(8, os.cpu_count() or 1) if device.type == "cuda" else 0


@handle_errors
def command(
    samples: Annotated[Optional[Path], typer.Argument(help="A sample folder, an .npz of images, or a checkpoint (.safetensors) to sample from.")] = None,
    ref: Annotated[Optional[str], typer.Option("--ref", help="Reference: statistics .npz, dataset .zip, image folder, 'builtin' (as many built-in images as samples scored) or a registered name (default: the samples' training data).")] = None,
    weights: Annotated[Optional[Path], typer.Option("--weights", help="Inception weights: inception-2015-12-05.pt (or pt_inception-2015-12-05-6726825d.pth for legacy_pytorch); default $LORACLI_INCEPTION_WEIGHTS.")] = None,
    mode: Annotated[str, typer.Option("--mode", help="clean-fid mode: clean, legacy_tensorflow (EDM and older papers) or legacy_pytorch.")] = "clean",
    num: Annotated[Optional[int], typer.Option("--num", "-n", help="Images to score: the first N (default: all in a folder or .npz, 50000 from a checkpoint); with --make-ref builtin, the reference's size (default 50000). Under torchrun write -n, as torchrun takes --num for its own --numa-binding.")] = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Seeds to generate from a checkpoint (default 0 to num-1).")] = None,
    make_ref: Annotated[Optional[str], typer.Option("--make-ref", help="Compute and register the statistics of this data (a dataset zip, folder, cifar-10-batches-py or 'builtin').")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Name to register --make-ref statistics under.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Sampler steps when scoring a checkpoint (default: its preset).")] = None,
    sampler: Annotated[Optional[str], typer.Option("--sampler", help="Sampler when scoring a checkpoint (default: its preset).")] = None,
    batch: Annotated[int, typer.Option("--batch", help="Images per batch (bounds memory; the result does not depend on it).")] = 64,
    precision: Annotated[Optional[str], typer.Option("--precision", help="bf16 or fp32 for sampling (default: bf16 on CUDA, fp32 on CPU).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Score generated images against reference statistics (clean-fid; never downloads anything).

    Needs the Inception weights file (--weights or $LORACLI_INCEPTION_WEIGHTS). The result is printed and
    written as JSON beside the samples (`fid-<reference>.json` in a folder, `<name>.fid-<reference>.json` beside
    a file), with n, seeds, detector hash, mode, reference statistics hash and any warning: fewer than 50,000
    images are not the usual protocol, and 2,048 or fewer make the covariance singular.

    Examples:

      loracli fid samples/

      loracli fid samples/ --ref builtin

      loracli fid runs/nano-time-lora/ckpt.safetensors --num 5000

      loracli fid samples/ --ref cifar10-32x32.npz --mode legacy_tensorflow --weights inception-2015-12-05.pt

      loracli fid edm-cifar10.safetensors --num 50000 --ref cifar10

      loracli fid --make-ref cifar10-32x32.zip --name cifar10
    """
    from loracli.metrics import reference as references
    from loracli.metrics.detectors import check_mode, load_detector
    from loracli.metrics.fid import SizeCheck, result_path, score_folder, score_npz, write_result
    from loracli.train.distributed import start, stop

    check_mode(mode)
    if make_ref is None and samples is None:
        raise UserError("Give the samples to score (a folder, an .npz or a checkpoint), or --make-ref DATA --name NAME.")
    if make_ref is not None and (name is None or samples is not None):
        raise UserError("--make-ref DATA needs --name NAME and no samples argument.")
    if num is not None and num < 2:
        raise UserError(f"--num must be at least 2 (got {num}).")
    if batch < 1:
        raise UserError(f"--batch must be at least 1 (got {batch}).")
    if num is not None:
        check_count(num, "images (--num)")
    if make_ref is not None and num is not None and make_ref != "builtin":
        raise UserError("--num with --make-ref sets how many built-in images the reference has; other data is "
                        "used whole.")
    if samples is not None and not samples.exists():
        raise UserError(f"No samples at '{samples}'; give a folder of images, an .npz or a checkpoint.")
    is_checkpoint = samples is not None and samples.suffix.lower() == ".safetensors"
    sampling_flags = [flag for flag, value in (("--seeds", seeds), ("--steps", steps), ("--sampler", sampler),
                                               ("--precision", precision)) if value is not None]
    if sampling_flags and not is_checkpoint:
        raise UserError(f"{', '.join(sampling_flags)} apply when scoring a checkpoint; the images to score exist "
                        "already (use --num to score the first N).")
    if samples is not None and not (is_checkpoint or samples.is_dir() or samples.suffix.lower() == ".npz"):
        raise UserError(f"Cannot score '{samples}'; give a sample folder, an .npz of images or a .safetensors checkpoint.")

    process = start(device)  # joins the torchrun process group, if any
    if not process.is_main and not is_checkpoint:
        return  # under torchrun only sampling is shared out; files on disk are read by rank 0 alone
    device_used = process.device
    detector = load_detector(mode, weights, device_used)  # the weights are checked before anything else runs
    workers, progress = _workers(device_used), is_rank_zero()

    if make_ref is not None:
        path, stats = references.register(name, make_ref, detector, batch, workers, progress, num)
        console.print(f"Registered reference '{name}' ({stats.n} images, mode {mode}) at {path}.", highlight=False)
        return
    sizes = SizeCheck(warn if progress else None)  # warnings about too few images, said before the long part
    if is_checkpoint:
        record = _score_checkpoint(samples, ref, detector, num, seeds, batch, workers, precision, steps, sampler,
                                   sizes)
    elif samples.is_dir():
        record = score_folder(samples, ref, detector, num, batch, workers, progress, sizes)
    else:
        record = score_npz(samples, ref, detector, num, batch, workers, progress, sizes)
    stop(process)
    if record is not None:  # None on the ranks other than 0
        path = write_result(result_path(samples, record["reference"]["name"]), record)
        typer.echo(f"FID {round(record['fid'], 4) + 0.0:.4f}  (n={record['n']}, mode {record['mode']}, "
                   f"reference {record['reference']['name']}) -> {path}")


def warn(message: str) -> None:
    console.print(f"[yellow]Warning:[/] {message}", highlight=False, soft_wrap=True)


def _score_checkpoint(ckpt: Path, ref: str | None, detector: Any, num: int | None, seeds: str | None, batch: int,
                      workers: int, precision: str | None, steps: int | None, sampler: str | None,
                      sizes: Any) -> dict[str, Any] | None:
    import loracli
    from loracli.generate import choose_sampler
    from loracli.runtime import choose_precision
    from loracli.io.checkpoint import read_metadata
    from loracli.metrics.fid import reference_for, score_checkpoint
    from loracli.metrics.provenance import checkpoint_provenance

    info = read_metadata(ckpt)
    seed_list = parse_int_list(seeds) if seeds else list(range(num or DEFAULT_NUM))
    if num is not None:
        if len(seed_list) < num:
            raise UserError(f"--seeds gives {len(seed_list)} seeds, fewer than --num {num}.")
        seed_list = seed_list[:num]
    net = loracli.load(ckpt)
    choose_sampler(net, sampler, steps)  # refuse wrong settings before the reference is computed
    choose_precision(precision, detector.device)
    # Only rank 0 scores, so only it needs the reference; it is ready before any image is generated.
    reference = None
    if is_rank_zero():
        sizes.samples(len(seed_list))
        reference = reference_for(ref, info["extra"].get("data"), detector, batch, workers, True, len(seed_list),
                                  sizes)
    provenance = checkpoint_provenance(ckpt, net.checkpoint, info["config"])
    return score_checkpoint(net, ckpt, reference, detector, seed_list, batch, precision, is_rank_zero(), provenance,
                            steps, sampler, sizes)
