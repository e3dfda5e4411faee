"""``loracli sample``: seed-exact image generation from a checkpoint, one PNG per seed."""

from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, Sequence

import typer

from loracli.cli.common import console, handle_errors, is_rank_zero
from loracli.folders import check_output_folder
from loracli.errors import UserError
from loracli.seeds import parse_int_list

if TYPE_CHECKING:
    import numpy as np
    import torch

GRID_IMAGES = 64
_CLASS = re.compile(r"^\d+$")
_WEIGHTED_CLASS = re.compile(r"^(\d+):([^:]+)$")


def parse_class(text: str | None) -> int | dict[int, float] | None:
    """``"3"`` -> 3; ``"3:0.5,5:0.5"`` or ``"3:1.5"`` -> ``{class: weight}`` (a soft class vector).

    Anything else -- an empty item (``3:0.5,``), a class named twice, a weight that is not a finite number --
    is refused rather than guessed at.
    """
    if text is None:
        return None
    how = "use a class like 3, or weights like 3:0.5,5:0.5"
    if _CLASS.match(text.strip()):
        return int(text)
    mix: dict[int, float] = {}
    for part in (p.strip() for p in text.split(",")):
        match = _WEIGHTED_CLASS.match(part)
        weight = _float(match[2]) if match else None
        if weight is None:
            problem = "an empty item" if not part else f"'{part}'"
            raise UserError(f"Cannot read --class '{text}' ({problem} is not class:weight); {how}.")
        if not math.isfinite(weight):
            raise UserError(f"--class '{text}': the weight of class {match[1]} must be a finite number.")
        if int(match[1]) in mix:
            raise UserError(f"--class '{text}' names class {int(match[1])} twice; give each class once.")
        mix[int(match[1])] = weight
    return mix


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def label_array(labels: list[torch.Tensor]) -> np.ndarray:
    """improved-diffusion's ``arr_1``: class indices when every vector is one-hot, else the float vectors."""
    import numpy as np
    import torch

    vectors = torch.stack(labels)
    one_hot = bool(((vectors == 0) | (vectors == 1)).all() and (vectors.sum(1) == 1).all())
    return vectors.argmax(1).numpy().astype(np.int64) if one_hot else vectors.numpy().astype(np.float32)


def write_samples(net: Any, seeds: Sequence[int], outdir: Path, *, class_labels: Any = None, steps: int | None = None,
                  sampler: str | None = None, batch: int = 64, device: str | None = None,
                  precision: str | None = None, subdirs: bool = False, grid: bool = True, npz: bool = False,
                  provenance: dict[str, Any] | None = None, progress: bool = True,
                  **sampler_options: Any) -> dict[str, Any]:
    """Write one PNG per seed (each torchrun rank its share, once the process group is started), then on
    rank 0 grid.png, the npz and samples.json; returns the provenance record written to samples.json."""
    import torch

    from loracli._version import __version__
    from loracli.generate import choose_sampler, class_table, generate, image_shape, label_dim_of, shard_indices
    from loracli.images import save_grid, save_png, seed_filename
    from loracli.metrics.provenance import now
    from loracli.runtime import choose_precision, gather_to_rank_zero, pick_device, rank_and_world
    from loracli.seeds import format_int_list

    seeds = list(seeds)
    choice = choose_sampler(net, sampler, steps, **sampler_options)  # refuse bad settings before any work
    table = class_table(class_labels, label_dim_of(net), len(seeds))
    rank, world = rank_and_world()
    device_used = pick_device(device)
    precision_used = choose_precision(precision, device_used)
    keep = set(seeds if npz else seeds[:GRID_IMAGES] if grid else [])
    kept: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
    mine = shard_indices(len(seeds), batch, rank, world)
    labels = table[mine] if table is not None and table.ndim == 2 else table
    made = [f for f in reversed((outdir, *outdir.parents)) if not f.exists()]  # a failure removes what it made
    written: list[int] = []  # seeds, not paths: a million of them stay small
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        for b in generate(net, [seeds[i] for i in mine], labels, choice.steps, choice.name, batch, device_used,
                          precision_used, progress=progress and rank == 0, **choice.options):
            for k, seed in enumerate(b.seeds):
                path = outdir / seed_filename(seed, subdirs)
                if subdirs and not path.parent.exists():
                    made.append(path.parent)
                written.append(seed)
                save_png(path, b.images[k])
                if seed in keep:
                    kept[seed] = (b.images[k], None if b.labels is None else b.labels[k])
    except UserError:  # e.g. NonFiniteSamples: a set with broken images is no set at all
        _remove([outdir / seed_filename(seed, subdirs) for seed in written], made)
        raise
    except OSError as exc:
        raise UserError(f"Cannot write the images to '{outdir}' ({exc.strerror or exc}); pick another --outdir.") from None
    gathered = gather_to_rank_zero(kept)
    record = {
        "format": "loracli-samples",
        "checkpoint": provenance,
        "seeds": format_int_list(seeds),
        "num": len(seeds),
        "subdirs": subdirs,
        "class": class_labels if not isinstance(class_labels, dict) else {str(k): v for k, v in class_labels.items()},
        "sampling": {**choice.describe(), "nfe": choice.evaluations(net)},
        "precision": precision_used,
        "device": device_used.type,
        "world_size": world,
        "image_shape": list(image_shape(net)),
        "loracli_version": __version__,
        "date": now(),
    }
    if rank != 0:
        return record
    everything = {seed: item for part in gathered for seed, item in part.items()}
    if grid and seeds:
        save_grid(outdir / "grid.png", torch.stack([everything[s][0] for s in seeds[:GRID_IMAGES]]))
    if npz and seeds:
        _write_npz(outdir, [everything[s] for s in seeds])
    from loracli.io.atomic import write_text

    write_text(outdir / "samples.json", json.dumps(record, indent=2, default=str) + "\n")
    return record


def _remove(files: list[Path], folders: list[Path]) -> None:
    """Delete the images this command wrote and the folders it made for them (deepest first, if empty)."""
    for path in files:
        path.unlink(missing_ok=True)
    for folder in reversed(folders):
        with contextlib.suppress(OSError):  # a folder that holds anything else stays
            folder.rmdir()


def _write_npz(outdir: Path, items: list[tuple[torch.Tensor, torch.Tensor | None]]) -> Path:
    import numpy as np
    import torch

    from loracli.io.atomic import atomic_path

    images = torch.stack([img for img, _ in items]).permute(0, 2, 3, 1).numpy()
    arrays = {"arr_0": images}
    if items[0][1] is not None:
        arrays["arr_1"] = label_array([lab for _, lab in items])
    path = outdir / f"samples_{'x'.join(str(d) for d in images.shape)}.npz"
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return path


@handle_errors
def command(
    ckpt: Annotated[Path, typer.Argument(help="A loracli checkpoint (.safetensors).")],
    seeds: Annotated[str, typer.Option("--seeds", help="Seeds, e.g. 0-63 or 1,5,9 (0 to 2**32-1, at most 1,000,000); image k comes from seed k.")] = "0-63",
    class_: Annotated[Optional[str], typer.Option("--class", help="Class index, or weights like 3:0.5,5:0.5 or 3:1.5 (ClassLoRA mixes).")] = None,
    outdir: Annotated[Path, typer.Option("--outdir", help="Folder for the PNGs.")] = Path("samples"),
    subdirs: Annotated[bool, typer.Option("--subdirs", help="One folder per 1000 seeds (000000/, 001000/, ...).")] = False,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Sampler steps (default: the checkpoint's preset; EDM 18 = NFE 35).")] = None,
    sampler: Annotated[Optional[str], typer.Option("--sampler", help="heun, euler (edm family); ancestral, ddim (ddpm family).")] = None,
    eta: Annotated[Optional[float], typer.Option("--eta", help="DDIM noise, 0 to 1 (0: deterministic; 1: ancestral variance).")] = None,
    s_churn: Annotated[Optional[float], typer.Option("--s-churn", "--S_churn", help="EDM stochasticity strength (0: deterministic).")] = None,
    s_min: Annotated[Optional[float], typer.Option("--s-min", "--S_min", help="Lowest noise level that gets churn.")] = None,
    s_max: Annotated[Optional[float], typer.Option("--s-max", "--S_max", help="Highest noise level that gets churn.")] = None,
    s_noise: Annotated[Optional[float], typer.Option("--s-noise", "--S_noise", help="Churn noise inflation.")] = None,
    sigma_min: Annotated[Optional[float], typer.Option("--sigma-min", "--sigma_min", help="Lowest noise level (EDM: 0.002).")] = None,
    sigma_max: Annotated[Optional[float], typer.Option("--sigma-max", "--sigma_max", help="Highest noise level (EDM: 80).")] = None,
    rho: Annotated[Optional[float], typer.Option("--rho", help="EDM time step exponent (7).")] = None,
    batch: Annotated[int, typer.Option("--batch", help="Images per batch (bounds memory; results do not depend on it).")] = 64,
    grid: Annotated[bool, typer.Option("--grid/--no-grid", help="Also write grid.png of the first 64 images.")] = True,
    npz: Annotated[bool, typer.Option("--npz", help="Also write all images as one uint8 NHWC array (arr_0; labels arr_1).")] = False,
    precision: Annotated[Optional[str], typer.Option("--precision", help="bf16 or fp32 (default: bf16 on CUDA, fp32 on CPU).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Generate images, one PNG per seed (000003.png from seed 3), as NVlabs/edm's generate.py does.

    The same checkpoint and seeds give the same images at any batch size and on any number of GPUs
    (torchrun shards the seeds). The output folder also gets grid.png and samples.json (provenance that
    `loracli fid` reads). If sampling produces NaN, the command stops and removes what it wrote.

    Examples:

      loracli sample runs/nano-time-lora/ckpt.safetensors --seeds 0-63

      loracli sample runs/nano-time-lora-class-lora/ckpt.safetensors --class 3 --seeds 0-15 --outdir class3/

      loracli sample runs/nano-time-lora-class-lora/ckpt.safetensors --class 3:0.5,5:0.5 --seeds 0-15

      loracli sample edm-cifar10.safetensors --seeds 0-49999 --subdirs --outdir samples/

      torchrun --nproc_per_node 4 -m loracli sample ckpt.safetensors --seeds 0-49999 --outdir samples/
    """
    import loracli
    from loracli.io.checkpoint import read_metadata
    from loracli.metrics.provenance import checkpoint_provenance
    from loracli.train.distributed import start, stop

    seed_list = parse_int_list(seeds)
    class_labels = parse_class(class_)
    check_output_folder(outdir)
    net = loracli.load(ckpt)
    provenance = checkpoint_provenance(ckpt, net.checkpoint, read_metadata(ckpt)["config"])
    process = start(device)  # joins the torchrun process group, if any
    record = write_samples(
        net, seed_list, outdir, class_labels=class_labels, steps=steps, sampler=sampler, batch=batch,
        device=process.device,
        precision=precision, subdirs=subdirs, grid=grid, npz=npz, provenance=provenance, progress=True,
        eta=eta, S_churn=s_churn, S_min=s_min, S_max=s_max, S_noise=s_noise, sigma_min=sigma_min,
        sigma_max=sigma_max, rho=rho,
    )
    stop(process)
    if is_rank_zero():
        s = record["sampling"]
        console.print(f"Wrote {len(seed_list)} images to {outdir} ({s['sampler']}, {s['steps'] or 'all'} steps, "
                      f"NFE {s['nfe']}).", highlight=False)
