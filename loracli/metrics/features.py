"""Detector features of image files, zips, arrays and generated batches, preprocessed as clean-fid does.

Files go through clean-fid's own ``ResizeDataset`` (its decoding and per-mode resize). Images that never touch
the disk (``loracli fid CKPT``, arrays in an ``.npz``) get the same steps -- clean-fid's resizer for the mode,
then torchvision's ``ToTensor`` (x 255 for uint8 results) -- so a PNG folder and the arrays it was written
from give identical features.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from loracli.seeds import parse_int_list
from loracli.errors import UserError
from loracli.generate import progress_bar
from loracli.images import seed_filename
from loracli.metrics.detectors import Detector

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SAMPLES_RECORD = "samples.json"


def folder_images(folder: Path) -> list[Path]:
    """Every image under ``folder`` (recursively), in sorted order."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def read_samples_record(folder: Path) -> dict[str, Any] | None:
    """The provenance ``loracli sample`` left in ``folder`` (None for other folders)."""
    path = folder / SAMPLES_RECORD
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"'{path}' is not valid JSON; delete it to score the folder's images as they are.") from None


def folder_files(folder: Path, record: dict[str, Any] | None, num: int | None) -> tuple[list[Path], list[int] | None]:
    """The images to score, in seed order, and their seeds: those samples.json lists, else every image."""
    if record is not None:
        seeds = parse_int_list(record["seeds"])[:num]
        files = [folder / seed_filename(s, bool(record.get("subdirs"))) for s in seeds]
        missing = [f for f in files if not f.exists()]
        if missing:
            raise UserError(f"'{folder}' lacks {len(missing)} of the {len(files)} images samples.json lists "
                            f"(e.g. {missing[0].name}); rerun `loracli sample` to complete it.")
    else:
        seeds, files = None, folder_images(folder)[:num]
    if num is not None and len(files) < num:
        raise UserError(f"'{folder}' has {len(files)} images, fewer than --num {num}.")
    if len(files) < 2:
        raise UserError(f"'{folder}' has {len(files)} image(s); FID needs many (50000 for the usual protocol).")
    return files, seeds


def zip_images(path: Path) -> list[str]:
    """The image members of a zip (e.g. EDM's dataset zip), in sorted order."""
    with zipfile.ZipFile(path) as archive:
        return sorted(n for n in archive.namelist() if Path(n).suffix.lower() in IMAGE_EXTENSIONS)


def features_of_files(files: Sequence[Path | str], detector: Detector, batch: int = 64, workers: int = 0,
                      zip_path: Path | None = None, progress: bool = False) -> np.ndarray:
    """Features ``[N, D]`` of image files (or members of ``zip_path``), read and resized by clean-fid."""
    from cleanfid.utils import ResizeDataset

    dataset = ResizeDataset([str(f) for f in files], mode=detector.mode, fdir=str(zip_path) if zip_path else None)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=workers)
    out = []
    with progress_bar(len(files), "Features", progress) as advance:
        for x in loader:
            out.append(detector(x).cpu().numpy())
            advance(len(x))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def model_input(images: torch.Tensor, mode: str) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> what clean-fid's ``ResizeDataset`` would give for the same pixels in ``mode``."""
    from cleanfid.resize import build_resizer
    from torchvision.transforms.functional import to_tensor

    resize = build_resizer(mode)
    batch = []
    for image in images.cpu():
        array = image.permute(1, 2, 0).numpy()
        if array.shape[2] == 1:  # clean-fid reads grey PNGs as RGB
            array = np.repeat(array, 3, axis=2)
        resized = resize(array)
        batch.append(to_tensor(resized) * 255 if resized.dtype == np.uint8 else to_tensor(resized))
    return torch.stack(batch)


def features_of_arrays(batches: Iterable[torch.Tensor | np.ndarray], detector: Detector) -> np.ndarray:
    """Features ``[N, D]`` of uint8 image batches ``[n, C, H, W]`` that are not files."""
    out = [detector(model_input(torch.as_tensor(b), detector.mode)).cpu().numpy() for b in batches]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (n - 1), in float64 as EDM's fid.py keeps them."""
    features = np.asarray(features, dtype=np.float64)
    if len(features) < 2:
        raise ValueError("statistics need at least two images")
    return features.mean(axis=0), np.cov(features, rowvar=False)
