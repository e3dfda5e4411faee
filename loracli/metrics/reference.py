"""FID reference statistics: read from .npz files, computed from images, registered by name, cached.

A reference is ``mu`` and ``sigma`` (float64; the unbiased covariance), the format of clean-fid, EDM's
``fid.py`` and pytorch-fid alike. ``--ref`` may name a statistics ``.npz``, an ``.npz`` of images (``arr_0``),
an EDM dataset zip, an image folder, a cifar-10-batches-py folder, ``builtin`` (the built-in data), or a name
registered with ``loracli fid --make-ref DATA --name NAME``. Statistics that loracli computes depend on the detector and the
mode, so they are stored per mode and weights hash: ``<cache>/fid-refs/<name>/<mode>-<sha12>.npz``; those of
training data and zip files are cached under ``<cache>/fid-refs/auto/`` and computed once.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from loracli.errors import UserError
from loracli.generate import progress_bar
from loracli.io.atomic import atomic_path
from loracli.metrics import features as feats
from loracli.metrics.cache import refs_dir
from loracli.metrics.detectors import Detector
from loracli.metrics.provenance import array_sha256, now

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
BUILTIN_REFERENCE_SIZE = 50_000  # the built-in reference when no sample count says otherwise (--make-ref)


@dataclass(frozen=True)
class Reference:
    """Statistics to compare against, and what they were computed from."""

    name: str
    source: str
    mu: np.ndarray
    sigma: np.ndarray
    n: int | None = None

    @property
    def sha256(self) -> str:
        return array_sha256(self.mu, self.sigma)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "n": self.n, "stats_sha256": self.sha256}


# -- files -------------------------------------------------------------------------------------------------
def read_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` that the ``.npz`` at ``path`` holds (absent ones are left out), read with pickles
    refused; one sentence for a file that is not a readable numpy archive."""
    try:
        if not zipfile.is_zipfile(path):  # np.load would try it as a pickle and suggest allowing pickles
            with open(path, "rb") as f:
                single = f.read(6) == b"\x93NUMPY"
            raise ValueError("it holds a single .npy array" if single else "it is not a zip archive")
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in keys if key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"'{path}' could not be read as a numpy .npz archive ({reason}); give statistics (mu, "
                        "sigma) or images (arr_0) written by numpy.savez.") from None


def read_stats(path: Path, name: str | None = None) -> Reference | None:
    """A statistics ``.npz`` (keys ``mu``, ``sigma``); None when the file holds no statistics."""
    arrays = read_npz(path, ("mu", "sigma", "meta"))
    if "mu" not in arrays and "sigma" not in arrays:
        return None
    if "mu" not in arrays or "sigma" not in arrays:
        raise UserError(f"'{path}' holds {'mu' if 'mu' in arrays else 'sigma'} but not "
                        f"{'sigma' if 'mu' in arrays else 'mu'}; FID statistics need both.")
    try:
        mu, sigma = np.asarray(arrays["mu"], np.float64), np.asarray(arrays["sigma"], np.float64)
        meta = json.loads(str(arrays["meta"])) if "meta" in arrays else {}
    except (TypeError, ValueError) as exc:
        raise UserError(f"'{path}' holds mu and sigma that are not numbers ({exc}).") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise UserError(f"'{path}' holds mu {list(mu.shape)} and sigma {list(sigma.shape)}; expected [D] and [D, D].")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UserError(f"'{path}' holds NaN or infinite statistics; recompute them.")
    meta = meta if isinstance(meta, dict) else {}
    return Reference(name or meta.get("name") or path.stem, meta.get("source") or str(path.resolve()), mu, sigma,
                     meta.get("n"))


def write_stats(path: Path, ref: Reference, detector: Detector) -> Path:
    """Statistics as an ``.npz`` readable by clean-fid and EDM (``mu``, ``sigma``) plus a JSON ``meta``."""
    meta = {**ref.describe(), "mode": detector.mode, "detector": detector.describe(), "date": now()}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, mu=ref.mu, sigma=ref.sigma, meta=np.array(json.dumps(meta)))
    return path


def _stats_file(folder: Path, detector: Detector) -> Path:
    return folder / f"{detector.mode}-{detector.sha256[:12]}.npz"


def _from_features(name: str, source: str, features: np.ndarray) -> Reference:
    if len(features) < 2:
        raise UserError(f"The reference '{source}' has {len(features)} image(s); FID statistics need many more.")
    mu, sigma = feats.statistics(features)
    return Reference(name, source, mu, sigma, len(features))


def _cached(identity: dict[str, Any], detector: Detector, compute: Callable[[], Reference]) -> Reference:
    """``compute()`` once per (source identity, mode, weights); later calls read ``<cache>/fid-refs/auto/``."""
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = _stats_file(refs_dir() / "auto" / key, detector)
    if path.exists():
        return read_stats(path)
    ref = compute()
    write_stats(path, ref, detector)
    return ref


def _file_identity(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


# -- images and data sets ----------------------------------------------------------------------------------
def dataset_batches(dataset: Any, batch: int, progress: bool) -> Iterator[torch.Tensor]:
    """uint8 ``[n, C, H, W]`` batches of a loracli ImageDataset, in order."""
    with progress_bar(len(dataset), f"Reference {dataset.name}", progress) as advance:
        for start in range(0, len(dataset), batch):
            stop = min(start + batch, len(dataset))
            yield torch.from_numpy(np.stack([dataset[i][0] for i in range(start, stop)]))
            advance(stop - start)


def data_reference(data: str | dict[str, Any], detector: Detector, batch: int = 64,
                   progress: bool = False, count: int | None = None) -> Reference:
    """Statistics of a training set (all its images, no flips), computed once and cached.

    ``data``: ``"builtin"``, a path (EDM zip, image folder, cifar-10-batches-py), or the record a checkpoint
    keeps in ``extra["data"]`` (``{"path", "name", "builtin", "resolution", ...}``). The built-in data set is
    drawn, not stored, so its reference has ``count`` images (the number of samples scored; default 50,000):
    a handful of samples is not held up by 50,000 reference images, and both sides have the same n.
    """
    from loracli.data import BuiltinShapes, open_dataset

    record = data if isinstance(data, dict) else ({"builtin": True} if data == "builtin" else {"path": data})
    resolution = record.get("resolution")
    if record.get("builtin"):
        from loracli._version import __version__  # the built-in images are drawn by code, which may change

        size = int(count or BUILTIN_REFERENCE_SIZE)
        identity: dict[str, Any] = {"builtin": record.get("name", "builtin"), "resolution": resolution,
                                    "loracli": __version__, "size": size}
        path = None
    else:
        if not record.get("path"):
            raise UserError("The training data of these samples is not recorded; pass --ref.")
        path = Path(record["path"]).expanduser()
        if not path.exists():
            raise UserError(f"The training data '{path}' recorded in the checkpoint no longer exists; pass --ref "
                            "with its new location (or another reference).")
        identity = {**_file_identity(path), "resolution": resolution}

    def compute() -> Reference:
        dataset = BuiltinShapes(resolution or 32, size=size) if path is None else open_dataset(path, resolution)
        features = feats.features_of_arrays(dataset_batches(dataset, batch, progress), detector)
        return _from_features(record.get("name") or dataset.name, dataset.source or f"built-in {dataset.name}",
                              features)

    return _cached(identity, detector, compute)


def resolve(ref: str, detector: Detector, batch: int = 64, workers: int = 0, progress: bool = False,
            count: int | None = None) -> Reference:
    """The reference ``--ref`` names (see the module docstring); ``builtin`` is the first ``count`` images of the
    built-in data set (see :func:`data_reference`)."""
    if ref == "builtin":
        return data_reference(ref, detector, batch, progress, count)
    path = Path(ref).expanduser()
    if path.is_dir():
        if (path / "data_batch_1").exists():
            return data_reference(str(path), detector, batch, progress)
        files, _ = feats.folder_files(path, feats.read_samples_record(path), None)
        return _from_features(path.name, str(path.resolve()),
                              feats.features_of_files(files, detector, batch, workers, progress=progress))
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".npz":
            stats = read_stats(path)
            if stats is not None:
                return stats
            return _cached(_file_identity(path), detector,
                           lambda: _from_features(path.stem, str(path.resolve()), npz_features(path, detector, batch)))
        if suffix == ".zip":
            return _cached(_file_identity(path), detector, lambda: _from_features(
                path.stem, str(path.resolve()),
                feats.features_of_files(feats.zip_images(path), detector, batch, workers, path, progress)))
        raise UserError(f"Cannot use '{path}' as an FID reference; give a statistics .npz, a dataset .zip, "
                        "an image folder or a registered name.")
    return registered(ref, detector)


def npz_images(path: Path) -> np.ndarray:
    """``arr_0`` of an image ``.npz`` (improved-diffusion's and ``loracli sample --npz``'s), uint8 NHWC."""
    images = read_npz(path, ("arr_0",)).get("arr_0")
    if images is None:
        raise UserError(f"'{path}' holds neither statistics (mu, sigma) nor images (arr_0).")
    if images.dtype != np.uint8 or images.ndim != 4:
        raise UserError(f"'{path}' arr_0 is {images.dtype} {list(images.shape)}; expected uint8 images [N, H, W, C].")
    return images


def npz_features(path: Path, detector: Detector, batch: int = 64, num: int | None = None) -> np.ndarray:
    images = npz_images(path)[:num]
    chunks = (torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2) for i in range(0, len(images), batch))
    return feats.features_of_arrays(chunks, detector)


# -- registered names --------------------------------------------------------------------------------------
def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise UserError(f"Reference name '{name}' may use letters, digits, '.', '_' and '-' only.")
    return name


def register(name: str, data: str, detector: Detector, batch: int = 64, workers: int = 0,
             progress: bool = False, count: int | None = None) -> tuple[Path, Reference]:
    """Compute the statistics of ``data`` (anything ``--ref`` accepts, e.g. a training set or ``builtin``, of
    which ``count`` images) and store them as ``name`` for this mode and detector; returns the file and the
    statistics."""
    check_name(name)
    ref = replace(resolve(data, detector, batch, workers, progress, count), name=name)
    return write_stats(_stats_file(refs_dir() / name, detector), ref, detector), ref


def registered_names() -> list[str]:
    root = refs_dir()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "auto") if root.is_dir() else []


def registered(name: str, detector: Detector) -> Reference:
    folder = refs_dir() / name
    if not folder.is_dir():
        names = registered_names()
        raise UserError(f"'{name}' is neither a file, a folder nor a registered reference "
                        f"({'registered: ' + ', '.join(names) if names else 'none registered yet'}); "
                        "register one with `loracli fid --make-ref DATA --name NAME`.")
    path = _stats_file(folder, detector)
    if not path.exists():
        have = ", ".join(sorted(p.stem for p in folder.glob("*.npz"))) or "none"
        raise UserError(f"Reference '{name}' has no statistics for mode {detector.mode} with these weights "
                        f"(sha256 {detector.sha256[:12]}; it has: {have}); rerun `loracli fid --make-ref` with "
                        "this --mode and --weights.")
    return read_stats(path, name)
