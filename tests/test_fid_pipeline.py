"""FID end to end without downloads: a tiny TorchScript network stands in for inception-2015-12-05.pt (same
call signature: ``net(x, return_features=True)`` and ``net.layers``), so the real loading, preprocessing,
reference and recording code runs."""

from __future__ import annotations

import io
import json
import urllib.request
import warnings
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import loracli
from loracli.errors import UserError
from loracli.metrics import features as feats
from loracli.metrics.detectors import URLS, load_detector
from loracli.metrics.fid import frechet_distance
from loracli.metrics.reference import resolve


class TinyLayers(nn.Module):
    """A fixed random conv net: 299x299 input in [-1, 1] -> 16 features."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3, 9, 9, generator=torch.Generator().manual_seed(0)) / 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(torch.tanh(F.conv2d(x, self.weight, stride=8)), 2)


class TinyInception(nn.Module):
    """The interface of the TorchScript Inception: resizes inside unless called through ``layers``."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = TinyLayers()

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.layers((x - 128) / 128)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No test here may reach the network, and the cache is private to the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setenv("LORACLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LORACLI_INCEPTION_WEIGHTS", raising=False)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "inception-2015-12-05.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(TinyInception()), str(path))
    return path


def random_images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    """uint8 [n, 3, size, size]: smooth colour blobs, so features vary."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(n, 3, 1, 1))
    noise = rng.integers(-40, 40, size=(n, 3, size, size))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_folder(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(images):
        PIL.Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{k:06d}.png")
    return folder


def write_edm_zip(path: Path, images: np.ndarray, labels: list[int] | None = None) -> Path:
    """EDM's dataset_tool layout: stored PNGs 00000/img00000000.png and dataset.json."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        names = []
        for k, image in enumerate(images):
            name = f"{k:08d}"[:5] + f"/img{k:08d}.png"
            buf = io.BytesIO()
            PIL.Image.fromarray(image.transpose(1, 2, 0)).save(buf, format="png", compress_level=0)
            z.writestr(name, buf.getvalue())
            names.append(name)
        meta = {"labels": [[n, c] for n, c in zip(names, labels)] if labels else None}
        z.writestr("dataset.json", json.dumps(meta))
    return path


def test_missing_weights_say_which_file_where_from_and_where_to_put_it(tmp_path):
    with pytest.raises(UserError) as info:
        load_detector("clean")
    message = str(info.value)
    for part in ("inception-2015-12-05.pt", URLS["inception-2015-12-05.pt"], "--weights", "LORACLI_INCEPTION_WEIGHTS",
                 str(tmp_path / "cache" / "inception-2015-12-05.pt")):
        assert part in message
    with pytest.raises(UserError, match="pt_inception-2015-12-05-6726825d.pth"):
        load_detector("legacy_pytorch")
    with pytest.raises(UserError, match="No Inception weights at"):
        load_detector("clean", tmp_path / "nowhere.pt")
    with pytest.raises(UserError, match="Unknown FID mode"):
        load_detector("tensorflow")


def test_weights_from_the_environment_or_the_cache(weights, monkeypatch, tmp_path):
    monkeypatch.setenv("LORACLI_INCEPTION_WEIGHTS", str(weights))
    detector = load_detector("clean")
    assert detector.path == weights.resolve() and len(detector.sha256) == 64
    monkeypatch.delenv("LORACLI_INCEPTION_WEIGHTS")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "inception-2015-12-05.pt").write_bytes(weights.read_bytes())
    assert load_detector("clean").sha256 == detector.sha256


def test_broken_or_wrong_weight_files(weights, tmp_path):
    truncated = tmp_path / "inception-2015-12-05.pt"
    truncated.write_bytes(weights.read_bytes()[:500])
    with pytest.raises(UserError):
        load_detector("clean", truncated)
    with pytest.raises(UserError, match="needs pt_inception-2015-12-05-6726825d.pth"):
        load_detector("legacy_pytorch", weights)


@pytest.mark.parametrize("mode", ["clean", "legacy_tensorflow"])
def test_png_files_and_in_memory_images_give_identical_features(weights, tmp_path, mode):
    images = random_images(6)
    detector = load_detector(mode, weights)
    from_files = feats.features_of_files(feats.folder_images(write_folder(tmp_path, images)), detector, batch=4)
    from_arrays = feats.features_of_arrays([torch.from_numpy(images[:4]), torch.from_numpy(images[4:])], detector)
    assert from_files.shape == (6, 16)
    np.testing.assert_array_equal(from_files, from_arrays)


def test_clean_and_legacy_tensorflow_preprocess_differently(weights):
    images = torch.from_numpy(random_images(3))
    assert feats.model_input(images, "clean").shape == (3, 3, 299, 299)  # resized outside the network
    assert torch.equal(feats.model_input(images, "legacy_tensorflow"), images.float())  # inside it
    clean = feats.features_of_arrays([images], load_detector("clean", weights))
    legacy = feats.features_of_arrays([images], load_detector("legacy_tensorflow", weights))
    assert not np.allclose(clean, legacy)


def test_an_edm_zip_reference_equals_the_same_images_as_a_folder(weights, tmp_path):
    images = random_images(20, seed=1)
    detector = load_detector("clean", weights)
    from_zip = resolve(str(write_edm_zip(tmp_path / "toy.zip", images, [k % 2 for k in range(20)])), detector)
    from_folder = resolve(str(write_folder(tmp_path / "toy", images)), detector)
    assert from_zip.n == from_folder.n == 20 and from_zip.name == "toy"
    np.testing.assert_allclose(from_zip.mu, from_folder.mu, rtol=0, atol=1e-12)
    np.testing.assert_allclose(from_zip.sigma, from_folder.sigma, rtol=0, atol=1e-12)
    cached = list((tmp_path / "cache" / "fid-refs" / "auto").rglob("*.npz"))
    assert len(cached) == 1  # the zip's statistics are kept for next time
    assert resolve(str(tmp_path / "toy.zip"), detector).sha256 == from_zip.sha256


def nano_checkpoint(path: Path, data: dict | None) -> Path:
    torch.manual_seed(0)
    net = loracli.create_model("nano", model_channels=8, channel_mult=(1, 2), img_resolution=8, label_dim=2,
                               channels_per_head=8, attn_resolutions=(4,), diffusion_steps=20)
    return loracli.save(net, path, extra={"data": data} if data else None)


@pytest.fixture
def run(cli, weights):
    def invoke(*args):
        return cli(*args, "--weights", weights) if args[0] == "fid" else cli(*args)
    return invoke


def test_bare_fid_of_a_sample_folder_uses_the_recorded_training_data(run, tmp_path, weights):
    train = random_images(24, seed=2)
    data = write_edm_zip(tmp_path / "train.zip", train, [k % 2 for k in range(24)])
    record = {"path": str(data), "name": "train", "builtin": False, "resolution": 8, "label_dim": 2}
    ckpt = nano_checkpoint(tmp_path / "nano.safetensors", record)
    assert run("sample", ckpt, "--seeds", "0-19", "--outdir", tmp_path / "s", "--steps", "2").exit_code == 0

    result = run("fid", tmp_path / "s")
    assert result.exit_code == 0, result.output
    out = json.loads((tmp_path / "s" / "fid-train.json").read_text())
    assert f"FID {out['fid']:.4f}" in result.output
    assert out["n"] == 20 and out["seeds"] == "0-19" and out["mode"] == "clean"
    assert out["detector"]["sha256"] and out["resize"].startswith("PIL bicubic")
    assert out["reference"]["name"] == "train" and out["reference"]["n"] == 24
    assert out["samples"]["provenance"]["checkpoint"]["data"] == record
    assert out["loracli_version"] == loracli.__version__ and out["clean_fid_version"] and out["date"]

    # The number is the formula on the 20 generated images (not grid.png) against the 24 training images.
    detector = load_detector("clean", weights)
    samples = loracli.sample(loracli.load(ckpt), range(20), steps=2)
    fs = feats.features_of_arrays([samples], detector).astype(np.float64)
    ft = feats.features_of_arrays([torch.from_numpy(train)], detector).astype(np.float64)
    expected = frechet_distance(fs.mean(0), np.cov(fs, rowvar=False), ft.mean(0), np.cov(ft, rowvar=False))
    assert out["fid"] == pytest.approx(expected, rel=1e-9)

    cache = list((tmp_path / "cache" / "fid-refs" / "auto").rglob("*.npz"))
    assert len(cache) == 1
    stamp = cache[0].stat().st_mtime_ns
    assert run("fid", tmp_path / "s").exit_code == 0
    assert cache[0].stat().st_mtime_ns == stamp  # computed once


def test_fid_of_a_set_against_itself_is_zero_and_the_value_is_the_formula(run, tmp_path, weights):
    images = random_images(30, seed=3)
    write_folder(tmp_path / "a", images)
    write_folder(tmp_path / "b", random_images(30, seed=4))
    result = run("fid", tmp_path / "a", "--ref", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "a" / "fid-a.json").read_text())["fid"] == pytest.approx(0, abs=1e-6)

    assert run("fid", tmp_path / "a", "--ref", tmp_path / "b").exit_code == 0
    value = json.loads((tmp_path / "a" / "fid-b.json").read_text())["fid"]
    detector = load_detector("clean", weights)
    fa = feats.features_of_arrays([torch.from_numpy(images)], detector).astype(np.float64)
    fb = feats.features_of_arrays([torch.from_numpy(random_images(30, seed=4))], detector).astype(np.float64)
    expected = frechet_distance(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))
    assert value == pytest.approx(expected, rel=1e-9) and value > 0.01


def test_statistics_npz_and_image_npz_references(run, tmp_path, weights):
    images = random_images(30, seed=5)
    write_folder(tmp_path / "a", images)
    np.savez(tmp_path / "imgs.npz", arr_0=images.transpose(0, 2, 3, 1))  # improved-diffusion's sample format
    assert run("fid", tmp_path / "a", "--ref", tmp_path / "imgs.npz").exit_code == 0
    assert json.loads((tmp_path / "a" / "fid-imgs.json").read_text())["fid"] == pytest.approx(0, abs=1e-6)

    detector = load_detector("clean", weights)
    f = feats.features_of_arrays([torch.from_numpy(random_images(30, seed=6))], detector).astype(np.float64)
    np.savez(tmp_path / "stats.npz", mu=f.mean(0), sigma=np.cov(f, rowvar=False))  # EDM's format
    assert run("fid", tmp_path / "imgs.npz", "--ref", tmp_path / "stats.npz").exit_code == 0
    out = json.loads((tmp_path / "imgs.fid-stats.json").read_text())
    assert out["samples"]["kind"] == "npz" and out["n"] == 30 and out["fid"] > 0.01


def test_checkpoint_scored_in_one_pass_equals_its_sample_folder(run, tmp_path):
    ref = write_edm_zip(tmp_path / "ref.zip", random_images(16, seed=7))
    ckpt = nano_checkpoint(tmp_path / "nano.safetensors", None)
    assert run("sample", ckpt, "--seeds", "0-11", "--outdir", tmp_path / "s", "--steps", "2", "--no-grid").exit_code == 0
    assert run("fid", tmp_path / "s", "--ref", ref).exit_code == 0
    folder = json.loads((tmp_path / "s" / "fid-ref.json").read_text())
    result = run("fid", ckpt, "--num", "12", "--ref", ref, "--steps", "2", "--batch", "5")
    assert result.exit_code == 0, result.output
    direct = json.loads((tmp_path / "nano.fid-ref.json").read_text())
    assert direct["fid"] == pytest.approx(folder["fid"], rel=1e-12)
    assert direct["seeds"] == "0-11" and direct["samples"]["sampling"]["steps"] == 2
    assert direct["samples"]["provenance"]["model"] == "nano"


def test_registered_references_are_per_mode(run, tmp_path):
    data = write_edm_zip(tmp_path / "toy.zip", random_images(12, seed=8))
    write_folder(tmp_path / "s", random_images(12, seed=9))
    result = run("fid", "--make-ref", data, "--name", "toy")
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "cache" / "fid-refs" / "toy").glob("clean-*.npz"))
    assert run("fid", tmp_path / "s", "--ref", "toy").exit_code == 0
    result = run("fid", tmp_path / "s", "--ref", "toy", "--mode", "legacy_tensorflow")
    assert result.exit_code == 2 and "no statistics for mode legacy_tensorflow" in result.output
    result = run("fid", tmp_path / "s", "--ref", "nothing-like-it")
    assert result.exit_code == 2 and "registered: toy" in result.output


def test_weights_and_reference_are_checked_before_sampling(cli, tmp_path):
    ckpt = nano_checkpoint(tmp_path / "nano.safetensors", None)
    result = cli("fid", ckpt, "--num", "8")
    assert result.exit_code == 2 and "never downloads" in result.output and "Sampling" not in result.output


def test_no_reference_for_a_converted_checkpoint(run, tmp_path):
    ckpt = nano_checkpoint(tmp_path / "nano.safetensors", None)
    result = run("fid", ckpt, "--num", "8")
    assert result.exit_code == 2 and "pass --ref" in result.output and "Sampling" not in result.output


def test_too_few_images_and_incomplete_sample_folders(run, tmp_path):
    ckpt = nano_checkpoint(tmp_path / "nano.safetensors", None)
    run("sample", ckpt, "--seeds", "0-3", "--outdir", tmp_path / "s", "--steps", "2")
    result = run("fid", tmp_path / "s", "--ref", tmp_path / "s", "--num", "10")
    assert result.exit_code == 2 and "fewer than --num 10" in result.output
    (tmp_path / "s" / "000002.png").unlink()
    result = run("fid", tmp_path / "s", "--ref", tmp_path / "s")
    assert result.exit_code == 2 and "lacks 1 of the 4 images" in result.output


@pytest.mark.slow
def test_pytorch_fid_state_dict_loads_without_a_download(tmp_path):
    """pytorch-fid's weights file (here random weights with its keys) runs mode legacy_pytorch offline."""
    import torchvision

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008,
                                                init_weights=False).state_dict()
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    detector = load_detector("legacy_pytorch", path)
    assert "pytorch-fid" in detector.name
    features = feats.features_of_arrays([torch.from_numpy(random_images(2, size=16))], detector)
    assert features.shape == (2, 2048) and np.isfinite(features).all()
    with pytest.raises(UserError, match="needs inception-2015-12-05.pt"):
        load_detector("clean", path)


@pytest.mark.parametrize("args, message", [
    (["--make-ref", "builtin"], "needs --name NAME"),
    (["{folder}", "--steps", "3"], "--steps apply when scoring a checkpoint"),
    (["{folder}/notes.txt"], "Cannot score"),
    (["{folder}/missing"], "No samples at"),
    (["{folder}", "--mode", "clean-ish"], "Unknown FID mode"),
    (["{folder}", "--num", "1"], "at least 2"),
])
def test_argument_mistakes(run, tmp_path, args, message):
    write_folder(tmp_path / "f", random_images(3))
    (tmp_path / "f" / "notes.txt").write_text("not images")
    result = run("fid", *[a.replace("{folder}", str(tmp_path / "f")) for a in args])
    assert result.exit_code == 2 and message in result.output
