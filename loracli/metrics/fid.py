"""Fréchet Inception Distance of a sample folder, an image .npz or a checkpoint, with a record that makes it
comparable: n, seeds, detector and its hash, mode and resize, reference and its statistics hash.

clean-fid is the backend for what makes FIDs comparable -- its per-mode resizers and image reading -- called with
explicit arguments and the user's detector, so it never downloads, never writes to /tmp and never assumes CUDA.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from loracli.errors import UserError
from loracli.io.atomic import write_text
from loracli.metrics import features as feats
from loracli.metrics.detectors import RESIZE, Detector
from loracli.metrics.provenance import now
from loracli.seeds import format_int_list
from loracli.metrics.reference import Reference, data_reference, npz_features, npz_images, resolve

def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """``||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrt(S1 S2))`` with scipy's sqrtm, real part, as clean-fid and EDM.

    Written out rather than taken from clean-fid because clean-fid passes ``sqrtm(disp=False)``, which SciPy
    deprecates; a product that is not finite gets ``eps`` on both diagonals, as in clean-fid.
    """
    import warnings

    from scipy.linalg import LinAlgWarning, sqrtm

    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    if mu1.shape != mu2.shape:
        raise UserError(f"The samples have {mu1.shape[0]}-d features but the reference {mu2.shape[0]}-d "
                        "statistics; use a reference made with the same Inception network.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LinAlgWarning)  # nearly singular products are expected for small n
        covmean = sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(mu1)) * eps
            covmean = sqrtm((sigma1 + offset) @ (sigma2 + offset))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(np.real(covmean)))


# -- how many images --------------------------------------------------------------------------------------
INCEPTION_DIM = 2048  # features per image; n images give a covariance of rank at most n - 1
PROTOCOL_N = 50_000  # the usual protocol (EDM, the paper): 50,000 samples


@dataclass
class SizeCheck:
    """Warnings about too few images, said as soon as the count is known (before the expensive part) through
    ``warn`` and kept for the record, so that a number from 3 images never passes for an FID."""

    warn: Callable[[str], None] | None = None
    messages: list[str] = field(default_factory=list)

    def _say(self, message: str) -> None:
        self.messages.append(message)
        if self.warn is not None:
            self.warn(message)

    def samples(self, n: int) -> None:
        if n <= INCEPTION_DIM:
            self._say(f"Scoring only {n:,} images: with {INCEPTION_DIM:,} or fewer the covariance of the "
                      f"{INCEPTION_DIM:,} Inception features is singular, so this FID is a rough, strongly biased "
                      f"number, not comparable with published ones (the usual protocol scores {PROTOCOL_N:,}).")
        elif n < PROTOCOL_N:
            self._say(f"Scoring {n:,} images, fewer than the usual protocol's {PROTOCOL_N:,}: FID is biased "
                      f"upward at small n, so compare this number only with FIDs of {n:,} images.")

    def reference(self, ref: Reference) -> None:
        if ref.n is not None and ref.n <= INCEPTION_DIM:
            self._say(f"The reference '{ref.name}' has only {ref.n:,} images: with {INCEPTION_DIM:,} or fewer its "
                      "covariance is singular, so this FID is a rough guide only.")


def check_dimensions(ref: Reference, detector: Detector) -> None:
    """Refuse statistics of another feature size before any image is read (not after the expensive part)."""
    if len(ref.mu) != detector.dim:
        raise UserError(f"The reference '{ref.name}' has {len(ref.mu)}-d statistics but this Inception network "
                        f"gives {detector.dim}-d features; use a reference made with the same network.")


def fid_against(features: np.ndarray, ref: Reference) -> float:
    mu, sigma = feats.statistics(features)
    return frechet_distance(mu, sigma, ref.mu, ref.sigma)


# -- what is being scored ----------------------------------------------------------------------------------
def reference_for(ref: str | None, data: dict[str, Any] | None, detector: Detector, batch: int = 64,
                  workers: int = 0, progress: bool = False, count: int | None = None,
                  sizes: SizeCheck | None = None) -> Reference:
    """``--ref`` if given, else the statistics of the training data the checkpoint records (cached); checked
    against the detector's feature size and, when ``sizes`` is given, for its number of images.

    ``count`` is the number of samples to be scored: the size of a built-in data reference (see
    :func:`~loracli.metrics.reference.data_reference`).
    """
    if ref is None and not data:
        raise UserError("No reference to compare with: the checkpoint records no training data, so pass --ref (a "
                        "statistics .npz, a dataset .zip, an image folder or a name registered with --make-ref).")
    reference = (resolve(ref, detector, batch, workers, progress, count) if ref is not None else
                 data_reference(data, detector, batch, progress, count))
    check_dimensions(reference, detector)
    if sizes is not None:
        sizes.reference(reference)
    return reference


# -- the record --------------------------------------------------------------------------------------------
def result(fid: float, n: int, seeds: Sequence[int] | None, samples: dict[str, Any], detector: Detector,
           ref: Reference, warnings: Sequence[str] = ()) -> dict[str, Any]:
    """Everything needed to compare this number with another one, and what was said about its sizes."""
    from loracli._version import __version__

    return {
        "fid": fid,
        "n": n,
        "seeds": format_int_list(seeds) if seeds is not None else None,
        "samples": samples,
        "detector": detector.describe(),
        "mode": detector.mode,
        "resize": RESIZE[detector.mode],
        "reference": ref.describe(),
        "warnings": list(warnings),
        "loracli_version": __version__,
        "clean_fid_version": importlib.metadata.version("clean-fid"),
        "date": now(),
    }


def result_path(samples: Path, ref_name: str) -> Path:
    """``<folder>/fid-<ref>.json`` beside the samples; ``<file stem>.fid-<ref>.json`` beside a file."""
    tag = re.sub(r"[^A-Za-z0-9._-]+", "_", ref_name)
    return samples / f"fid-{tag}.json" if samples.is_dir() else samples.with_name(f"{samples.stem}.fid-{tag}.json")


def write_result(path: Path, record: dict[str, Any]) -> Path:
    write_text(path, json.dumps(record, indent=2) + "\n")
    return path


# -- scoring -----------------------------------------------------------------------------------------------
def score_folder(folder: Path, ref: str | None, detector: Detector, num: int | None = None, batch: int = 64,
                 workers: int = 0, progress: bool = False, sizes: SizeCheck | None = None) -> dict[str, Any]:
    """FID of a folder of images (``loracli sample``'s or any other) against ``ref``."""
    sizes = sizes or SizeCheck()
    record = feats.read_samples_record(folder)
    files, seeds = feats.folder_files(folder, record, num)
    sizes.samples(len(files))
    data = ((record or {}).get("checkpoint") or {}).get("data")
    reference = reference_for(ref, data, detector, batch, workers, progress, len(files), sizes)
    features = feats.features_of_files(files, detector, batch, workers, progress=progress)
    samples = {"kind": "folder", "path": str(folder.resolve()), "provenance": record}
    return result(fid_against(features, reference), len(files), seeds, samples, detector, reference, sizes.messages)


def score_npz(path: Path, ref: str | None, detector: Detector, num: int | None = None, batch: int = 64,
              workers: int = 0, progress: bool = False, sizes: SizeCheck | None = None) -> dict[str, Any]:
    """FID of an ``.npz`` of uint8 images (``arr_0``) against ``ref``."""
    sizes = sizes or SizeCheck()
    count = len(npz_images(path))
    if num is not None and count < num:
        raise UserError(f"'{path}' has {count} images, fewer than --num {num}.")
    n = min(count, num) if num is not None else count
    if n < 2:
        raise UserError(f"'{path}' has {n} image(s); FID needs many ({PROTOCOL_N:,} for the usual protocol).")
    sizes.samples(n)
    reference = reference_for(ref, None, detector, batch, workers, progress, n, sizes)
    features = npz_features(path, detector, batch, num)
    samples = {"kind": "npz", "path": str(path.resolve())}
    return result(fid_against(features, reference), len(features), None, samples, detector, reference,
                  sizes.messages)


def score_checkpoint(net: Any, ckpt: Path, reference: Reference | None, detector: Detector, seeds: Sequence[int],
                     batch: int = 64, precision: str | None = None, progress: bool = False,
                     provenance: dict[str, Any] | None = None, steps: int | None = None, sampler: str | None = None,
                     sizes: SizeCheck | None = None, **sampler_options: Any) -> dict[str, Any] | None:
    """Generate ``seeds`` from ``net`` and score them without writing images. Under torchrun every rank
    generates its share and rank 0 scores them all in seed order (returns None on the other ranks).
    ``sizes`` holds the warnings said while the reference was prepared, for the record."""
    from loracli.generate import choose_sampler, generate, shard_indices
    from loracli.runtime import choose_precision, gather_to_rank_zero, rank_and_world

    seeds = list(seeds)
    choice = choose_sampler(net, sampler, steps, **sampler_options)
    rank, world = rank_and_world()
    mine = shard_indices(len(seeds), batch, rank, world)
    parts = [detector(feats.model_input(b.images, detector.mode)).cpu().numpy()
             for b in generate(net, [seeds[i] for i in mine], None, choice.steps, choice.name, batch,
                               detector.device, precision, progress=progress and rank == 0, **choice.options)]
    gathered = gather_to_rank_zero((mine, np.concatenate(parts) if parts else None))
    if rank != 0:
        return None
    positions = np.concatenate([p for p, f in gathered if f is not None])
    features = np.concatenate([f for p, f in gathered if f is not None])[np.argsort(positions, kind="stable")]
    samples = {"kind": "checkpoint", "path": str(ckpt.resolve()), "provenance": provenance,
               "sampling": {**choice.describe(), "nfe": choice.evaluations(net)},
               "precision": choose_precision(precision, detector.device)}
    return result(fid_against(features, reference), len(features), seeds, samples, detector, reference,
                  (sizes or SizeCheck()).messages)
