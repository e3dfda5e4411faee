"""``loracli sample``: seed-exact image generation from a checkpoint, one PNG per seed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional, Sequence

import typer

from loracli.cli.common import console, handle_errors, is_rank_zero
from loracli.seeds import parse_int_list
from loracli.errors import UserError

GRID_IMAGES = 64


def parse_class(text: str | None) -> int | dict[int, float] | None:
    """``"3"`` -> 3; ``"3:0.5,5:0.5"`` or ``"3:1.5"`` -> ``{class: weight}`` (a soft class vector)."""
    if text is None:
        return None
    try:
        if ":" not in text:
            return int(text)
        mix: dict[int, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            k, _, w = part.partition(":")
            mix[int(k)] = mix.get(int(k), 0.0) + float(w)
        if not mix:
            raise ValueError
        return mix
    except ValueError:
        raise UserError(f"Cannot read --class '{text}'; use a class like 3, or weights like 3:0.5,5:0.5.") from None


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
    from loracli._version import __version__
    from loracli.generate import choose_sampler, class_table, generate, image_shape, label_dim_of, shard_indices
    from loracli.runtime import choose_precision, gather_to_rank_zero, pick_device, rank_and_world
    from loracli.images import save_grid, save_png, seed_filename
    from loracli.metrics.provenance import now
    from loracli.seeds import format_int_list
    import torch

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
    for b in generate(net, [seeds[i] for i in mine], labels, choice.steps, choice.name, batch, device_used,
                      precision_used, progress=progress and rank == 0, **choice.options):
        for k, seed in enumerate(b.seeds):
            save_png(outdir / seed_filename(seed, subdirs), b.images[k])
            if seed in keep:
                kept[seed] = (b.images[k], None if b.labels is None else b.labels[k])
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
    seeds: Annotated[str, typer.Option("--seeds", help="Seeds, e.g. 0-63 or 1,5,9; image k comes from seed k.")] = "0-63",
    class_: Annotated[Optional[str], typer.Option("--class", help="Class index, or weights like 3:0.5,5:0.5 or 3:1.5 (ClassLoRA mixes).")] = None,
    outdir: Annotated[Path, typer.Option("--outdir", help="Folder for the PNGs.")] = Path("samples"),
    subdirs: Annotated[bool, typer.Option("--subdirs", help="One folder per 1000 seeds (000000/, 001000/, ...).")] = False,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Sampler steps (default: the checkpoint's preset; EDM 18 = NFE 35).")] = None,
    sampler: Annotated[Optional[str], typer.Option("--sampler", help="heun, euler (edm family); ancestral, ddim (ddpm family).")] = None,
    eta: Annotated[Optional[float], typer.Option("--eta", help="DDIM noise (0: deterministic).")] = None,
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
    `loracli fid` reads).

    Examples:

      loracli sample runs/nano/ckpt.safetensors --seeds 0-63

      loracli sample edm-cifar10.safetensors --seeds 0-49999 --subdirs --outdir samples/

      loracli sample classlora.safetensors --class 3:0.5,5:0.5 --seeds 0-15

      torchrun --nproc_per_node 4 -m loracli sample ckpt.safetensors --seeds 0-49999 --outdir samples/
    """
    import loracli
    from loracli.io.checkpoint import read_metadata
    from loracli.metrics.provenance import checkpoint_provenance
    from loracli.train.distributed import start, stop

    seed_list = parse_int_list(seeds)
    class_labels = parse_class(class_)
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
