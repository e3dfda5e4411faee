"""A grid of ClassLoRA samples swept between two classes: class vector (1 − λ)·e_a + λ·e_b, one row per seed.

λ = 0 is class a, λ = 1 class b, values in between interpolate the two classes' adapters and values outside
[0, 1] extrapolate (ClassLoRA's update is linear in the class vector). Every image of a row comes from the same
seed, so a row shows what the class vector alone changes. One column is what

    loracli sample CKPT --class a:{1-λ},b:{λ} --seeds 0-5

writes. With built-in data (`loracli train nano --only-lora --cond time-lora+class-lora`), the script also
prints where each column's mean colour lies between the two classes' real mean colours (0 = a, 1 = b):

    python benchmarks/class_sweep.py runs/nano-classlora/ckpt.safetensors --classes 0,1 --out sweep.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import loracli
from loracli.data import BuiltinShapes
from loracli.data.builtin import CLASSES
from loracli.errors import UserError
from loracli.images import make_grid
from loracli.io.atomic import atomic_path
from loracli.seeds import parse_int_list


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path, help="a class-conditional loracli checkpoint (ClassLoRA)")
    p.add_argument("--classes", default="0,1", help="the two classes a,b")
    p.add_argument("--lambdas", default="-0.5,-0.25,0,0.25,0.5,0.75,1,1.25,1.5", help="λ values (columns)")
    p.add_argument("--seeds", default="0-5", help="sampling seeds (rows)")
    p.add_argument("--sampler", default=None, help="sampler (default: the checkpoint preset's)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the preset's)")
    p.add_argument("--out", type=Path, default=Path("class-sweep.png"))
    return p.parse_args()


def sweep(net: torch.nn.Module, a: int, b: int, lambdas: list[float], seeds: list[int], **sampling) -> np.ndarray:
    """uint8 images ``[len(seeds), len(lambdas), C, H, W]``."""
    columns = [loracli.sample(net, seeds, class_labels={a: 1 - lam, b: lam}, **sampling).numpy() for lam in lambdas]
    return np.stack(columns, axis=1)


def colour_position(images: np.ndarray, a: int, b: int, resolution: int) -> np.ndarray:
    """Per column: the mean colour projected on the real data's class-a -> class-b mean-colour line (0 = a, 1 = b)."""
    data = BuiltinShapes(resolution)
    means = {k: np.mean([data[i][0].mean(axis=(1, 2)) for i in range(k, 5000, 10)], axis=0) for k in (a, b)}
    direction = means[b] - means[a]
    colours = images.astype(np.float64).mean(axis=(0, 3, 4))  # [columns, C]
    return (colours - means[a]) @ direction / direction.dot(direction)


def plot(images: np.ndarray, lambdas: list[float], seeds: list[int], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols, _, h, w = images.shape
    grid = make_grid(images.reshape(rows * cols, *images.shape[2:]), columns=cols)
    fig, ax = plt.subplots(figsize=(1.0 * cols + 0.8, 1.0 * rows + 0.9))
    ax.imshow(grid, interpolation="nearest")
    ax.set_xticks([(k + 0.5) * w - 0.5 for k in range(cols)], [f"{lam:g}" for lam in lambdas])
    ax.set_yticks([(k + 0.5) * h - 0.5 for k in range(rows)], [str(s) for s in seeds])
    ax.set_xlabel("λ  (class vector (1 − λ)·e_a + λ·e_b)")
    ax.set_ylabel("seed")
    ax.set_title(title, fontsize=10)
    for k in range(1, cols):
        ax.axvline(k * w - 0.5, color="white", lw=0.5)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def main() -> None:
    args = parse_args()
    a, b = (int(k) for k in args.classes.split(","))
    lambdas = [float(v) for v in args.lambdas.split(",")]
    seeds = parse_int_list(args.seeds)
    net = loracli.load(args.checkpoint)
    images = sweep(net, a, b, lambdas, seeds, sampler=args.sampler, steps=args.steps)
    builtin = (net.checkpoint.get("extra") or {}).get("data", {}).get("builtin")
    names = (CLASSES[a], CLASSES[b]) if builtin else (str(a), str(b))
    title = f"ClassLoRA sweep: a = {a} ({names[0]}), b = {b} ({names[1]})"
    print(f"wrote {plot(images, lambdas, seeds, title, args.out)}")
    if builtin:
        position = colour_position(images, a, b, images.shape[-1])
        print("λ                 " + " ".join(f"{lam:6g}" for lam in lambdas))
        print("colour position   " + " ".join(f"{p:6.2f}" for p in position))


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:  # a missing file or a wrong checkpoint: one sentence, exit 1
        raise SystemExit(f"error: {exc}") from None
