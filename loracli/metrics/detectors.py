"""The FID network (Inception-v3 of 2015-12-05) from a file the user supplies; nothing is ever downloaded.

Two files are accepted, chosen by clean-fid's mode:

- ``inception-2015-12-05.pt`` -- clean-fid's (and StyleGAN's) TorchScript port, for modes ``clean`` and
  ``legacy_tensorflow``. A TorchScript archive holds code that ``torch.jit.load`` runs; it is loaded only
  because it is the documented FID network and the user names it explicitly.
- ``pt_inception-2015-12-05-6726825d.pth`` -- pytorch-fid's state dict, for mode ``legacy_pytorch``, read with
  loracli's bounded torch-file reader (``loracli.io.convert.torch_archive``) into clean-fid's copy of pytorch-fid's architecture.

The file is found from ``--weights``, else ``$LORACLI_INCEPTION_WEIGHTS``, else ``<cache>/<file name>``.
"""

from __future__ import annotations

import functools
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import torch

from loracli.errors import UserError
from loracli.metrics.cache import cache_dir
from loracli.metrics.provenance import file_sha256

TORCHSCRIPT = "inception-2015-12-05.pt"
STATE_DICT = "pt_inception-2015-12-05-6726825d.pth"
URLS = {
    TORCHSCRIPT: "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
    STATE_DICT: "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                "pt_inception-2015-12-05-6726825d.pth",
}
MODES = {"clean": TORCHSCRIPT, "legacy_tensorflow": TORCHSCRIPT, "legacy_pytorch": STATE_DICT}
RESIZE = {
    "clean": "PIL bicubic to 299x299 on float data, outside the network (clean-fid clean)",
    "legacy_tensorflow": "TensorFlow-style bilinear to 299x299 inside the network (clean-fid legacy_tensorflow)",
    "legacy_pytorch": "torch bilinear to 299x299, outside the network (clean-fid legacy_pytorch)",
}
ENV = "LORACLI_INCEPTION_WEIGHTS"


@dataclass
class Detector:
    """A feature extractor: float images ``[N, 3, H, W]`` in 0..255 (resized as ``mode`` needs) -> ``[N, D]``."""

    name: str
    path: Path
    sha256: str
    mode: str
    device: torch.device
    extract: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.extract(batch.to(self.device, torch.float32)).float()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "file": str(self.path), "sha256": self.sha256}

    @functools.cached_property
    def dim(self) -> int:
        """Features per image (2048 for Inception), from one blank image, so that statistics of another size are
        refused before the expensive part."""
        from loracli.metrics.features import model_input

        blank = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
        return int(self(model_input(blank, self.mode)).shape[1])


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UserError(f"Unknown FID mode '{mode}'; use one of: {', '.join(MODES)}.")
    return mode


def find_weights(mode: str, weights: str | os.PathLike | None = None) -> Path:
    """The weights file for ``mode``: the flag, the environment variable, or the cache folder; else a UserError
    saying which file is needed, where it is published and where to put it."""
    wanted = MODES[check_mode(mode)]
    given = weights or os.environ.get(ENV)
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            origin = "--weights" if weights else f"${ENV}"
            raise UserError(f"No Inception weights at '{path}' (from {origin}); FID mode {mode} needs {wanted}, "
                            f"published at {URLS[wanted]}.")
        return path
    cached = cache_dir() / wanted
    if cached.is_file():
        return cached
    raise UserError(
        f"FID mode {mode} needs the Inception weights file {wanted} and loracli never downloads it: fetch it once "
        f"from {URLS[wanted]}, then pass --weights PATH, set {ENV}=PATH, or put it at {cached}."
    )


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip with a ``code/`` folder; ``torch.save`` files have none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in f"/{name}" for name in archive.namelist())


def _torchscript_extractor(path: Path, mode: str, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch deprecates TorchScript; the FID network is one
            net = torch.jit.load(str(path), map_location=device).eval()
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"'{path}' could not be loaded as TorchScript ({str(exc).splitlines()[0]}); it may be a "
                        f"partial download: fetch it again from {URLS[TORCHSCRIPT]}.") from None
    if mode == "legacy_tensorflow":
        return lambda x: net(x, return_features=True).reshape(len(x), -1)
    layers = net.layers  # clean mode: the network minus its internal resize, on (x - 128) / 128
    return lambda x: layers.forward((x - 128) / 128).reshape(len(x), -1)


def _state_dict_extractor(path: Path, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    from cleanfid import inception_pytorch

    from loracli.io.convert.torch_archive import read_torch_file

    try:
        state = read_torch_file(path)  # bounded and allow-listed: torch.load has no limits on nesting
    except Exception as exc:  # torch raises several types for a bad file
        raise UserError(f"'{path}' could not be read as a PyTorch state dict ({str(exc).splitlines()[0]}).") from None
    # clean-fid's builder fetches these weights from the web; hand it the user's copy instead.
    with mock.patch.object(inception_pytorch, "load_state_dict_from_url", lambda *a, **k: state), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            net = inception_pytorch.InceptionV3(output_blocks=[3], resize_input=False)
        except RuntimeError as exc:
            raise UserError(f"'{path}' does not hold pytorch-fid's Inception weights ({str(exc).splitlines()[0]}).") from None
    net = net.to(device).eval()
    return lambda x: net(x / 255)[0].reshape(len(x), -1)


def load_detector(mode: str = "clean", weights: str | os.PathLike | None = None,
                  device: torch.device | str = "cpu") -> Detector:
    """The FID network for ``mode`` from the user's weights file (see the module docstring)."""
    path = find_weights(mode, weights)
    device = torch.device(device)
    torchscript = is_torchscript(path)
    if torchscript != (MODES[mode] == TORCHSCRIPT):
        raise UserError(f"FID mode {mode} needs {MODES[mode]}, but '{path}' is "
                        f"{'a TorchScript archive' if torchscript else 'not a TorchScript archive'}; "
                        f"pass the other file or pick another --mode.")
    if torchscript:
        extract, name = _torchscript_extractor(path, mode, device), "inception-2015-12-05 (TorchScript)"
    else:
        extract, name = _state_dict_extractor(path, device), "inception-2015-12-05 (pytorch-fid state dict)"
    return Detector(name, path.resolve(), file_sha256(path), mode, device, extract)
