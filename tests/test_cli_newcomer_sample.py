"""A newcomer's mistakes with `loracli sample` and `loracli fid`: each ends in one sentence and exit code 2, with no
traceback and nothing written; samplers that produce NaN stop before any PNG is kept; a built-in FID reference has
as many images as the samples scored, and too few images are warned about before the long part and recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import loracli
from loracli.metrics.fid import SizeCheck
from loracli.models.nano import NanoUNet
from test_fid_pipeline import offline, random_images, weights, write_folder  # noqa: F401 (fixtures)
from test_sampling_cli import tiny_nano

BUILTIN = {"path": None, "name": "builtin-shapes", "builtin": True, "resolution": 8, "label_dim": 3}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return loracli.save(tiny_nano(), tmp_path_factory.mktemp("ckpt") / "nano.safetensors", extra={"data": BUILTIN})


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_sentence(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2, result.output


# -- sample ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--sampler", "ddim", "--eta", "5"], "--eta must be between 0 (deterministic DDIM) and 1"),
    (["--sampler", "ddim", "--eta", "-5"], "--eta must be between 0"),
    (["--sampler", "ddim", "--eta", "nan"], "--eta must be a finite number"),
    (["--class", "1:0.5,"], "Cannot read --class '1:0.5,' (an empty item is not class:weight)"),
    (["--class", "1:0.5,,2:0.5"], "an empty item"),
    (["--class", "1:"], "'1:' is not class:weight"),
    (["--class", ":0.5"], "':0.5' is not class:weight"),
    (["--class", "1:inf"], "the weight of class 1 must be a finite number"),
    (["--class", "1:0.5,1:0.5"], "names class 1 twice"),
    (["--seeds", "0-4000000000"], "That is 4,000,000,001 seeds; one command makes at most 1,000,000 images"),
    (["--seeds", "-1"], "'-1' is negative"),
    (["--seeds", "0-3,-2"], "'-2' is negative"),
    (["--seeds", "4294967296"], "4294967296 is too large"),
    (["--seeds", "0-3,"], "Cannot read seeds '0-3,'"),
    (["--batch", "0"], "--batch must be at least 1"),
    (["--outdir", "{file}"], "is a file, not a folder"),
    (["--outdir", "{file}/out"], "cannot be created because"),
])
def test_sample_mistakes(cli, ckpt, tmp_path, args, message):
    (tmp_path / "notes.txt").write_text("a file")
    before = files_under(tmp_path)
    result = cli("sample", ckpt, "--outdir", tmp_path / "out", "--steps", "2",
                 *[a.replace("{file}", str(tmp_path / "notes.txt")) for a in args])
    assert_one_sentence(result, message)
    assert files_under(tmp_path) == before and not (tmp_path / "out").exists()


def nan_at_call(monkeypatch, bad_call: int) -> None:
    """The network gives NaN at its ``bad_call``-th evaluation (1-based) -- broken settings or weights alike."""
    forward, calls = NanoUNet.forward, [0]

    def patched(self, *args, **kwargs):
        calls[0] += 1
        out = forward(self, *args, **kwargs)
        return out * float("nan") if calls[0] == bad_call else out

    monkeypatch.setattr(NanoUNet, "forward", patched)


@pytest.mark.parametrize("bad_call, existing, message", [
    (2, False, "Sampling produced NaN at step 2 of 3 for seeds 0-1;"),  # the first batch
    (8, False, "Sampling produced NaN at step 2 of 3 for seeds 4-5;"),  # the third: two batches were written
    (8, True, "at step 2 of 3"),                                        # into a folder that holds other files
])
def test_non_finite_sampling_stops_and_leaves_no_images(cli, ckpt, tmp_path, monkeypatch, bad_call, existing, message):
    out = tmp_path / "out"
    if existing:
        (out / "000000").mkdir(parents=True)
        (out / "notes.txt").write_text("mine")
    before = files_under(tmp_path)
    nan_at_call(monkeypatch, bad_call)
    result = cli("sample", ckpt, "--outdir", out, "--seeds", "0-5", "--batch", "2", "--steps", "3", "--subdirs")
    assert_one_sentence(result, message)
    assert "the checkpoint or the settings are broken, so no image was written" in result.output
    assert files_under(tmp_path) == before  # no PNG, grid, npz or samples.json
    assert out.exists() == existing and (not existing or (out / "000000").is_dir())


class Exploding(nn.Module):
    """An edm-family stand-in whose denoiser returns NaN at one evaluation."""

    family, label_dim, img_channels, img_resolution = "edm", 0, 3, 4

    def __init__(self, bad_call: int) -> None:
        super().__init__()
        self.bad_call, self.calls = bad_call, 0

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        self.calls += 1
        return x * (float("nan") if self.calls == self.bad_call else 0.5)


@pytest.mark.parametrize("sampler, bad_call, step", [("heun", 3, 2), ("heun", 5, 3), ("euler", 2, 2)])
def test_edm_samplers_name_the_step_that_went_non_finite(sampler, bad_call, step):
    from loracli.generate import NonFiniteSamples

    with pytest.raises(NonFiniteSamples, match=f"at step {step} of 3 for seeds 0-1"):
        loracli.sample(Exploding(bad_call), [0, 1], sampler=sampler, steps=3)
    assert loracli.sample(Exploding(99), [0, 1], sampler=sampler, steps=3).shape == (2, 3, 4, 4)  # finite: fine


@pytest.mark.parametrize("options, message", [
    ({"sigma_min": -1.0}, "--sigma-min must be positive"),
    ({"sigma_max": 0.0}, "--sigma-max must be positive"),
    ({"sigma_min": 5.0, "sigma_max": 1.0}, "--sigma-min (5) must be below --sigma-max (1)"),
    ({"rho": 0.0}, "--rho must be positive"),
    ({"S_churn": -1.0}, "--s-churn cannot be negative"),
    ({"S_noise": float("nan")}, "--s-noise must be a finite number"),
])
def test_edm_settings_that_cannot_give_images_are_refused(options, message):
    from loracli.errors import UserError
    from loracli.generate import choose_sampler

    with pytest.raises(UserError) as info:
        choose_sampler(Exploding(99), "heun", 3, **options)
    assert str(info.value).startswith(message)
    assert choose_sampler(Exploding(99), "heun", 3, S_max=float("inf"), S_churn=40.0).options["S_max"] == float("inf")


# -- fid ---------------------------------------------------------------------------------------------------
@pytest.fixture
def fid(cli, weights):  # noqa: F811 (the fixture imported above)
    return lambda *args: cli("fid", *args, "--weights", weights)


def write_npz(path: Path, content: str) -> Path:
    if content == "junk":
        path.write_bytes(b"this is not a numpy archive")
    elif content == "npy":
        np.save(path.with_suffix(".npy"), np.zeros(3))
        path.with_suffix(".npy").rename(path)
    elif content == "mu only":
        np.savez(path, mu=np.zeros(16))
    elif content == "shapes":
        np.savez(path, mu=np.zeros(16), sigma=np.zeros((16, 4)))
    elif content == "nan":
        np.savez(path, mu=np.zeros(16), sigma=np.full((16, 16), np.nan))
    elif content == "other network":
        np.savez(path, mu=np.zeros(8), sigma=np.eye(8))
    elif content == "pickled":
        np.savez(path, mu=np.array([1, None], dtype=object), sigma=np.eye(2))
    return path


@pytest.mark.parametrize("content, message", [
    ("junk", "could not be read as a numpy .npz archive (it is not a zip archive)"),
    ("npy", "(it holds a single .npy array)"),
    ("mu only", "holds mu but not sigma"),
    ("shapes", "holds mu [16] and sigma [16, 4]; expected [D] and [D, D]"),
    ("nan", "holds NaN or infinite statistics"),
    ("other network", "has 8-d statistics but this Inception network gives 16-d features"),
    ("pickled", "could not be read as a numpy .npz archive"),
])
def test_fid_reference_npz_mistakes(fid, tmp_path, content, message):
    folder = write_folder(tmp_path / "s", random_images(4))
    ref = write_npz(tmp_path / "ref.npz", content)
    before = files_under(tmp_path)
    assert_one_sentence(fid(folder, "--ref", ref), message)
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("args, message", [
    (["{ckpt}", "--num", "4000000000", "--ref", "builtin"], "one command makes at most 1,000,000 images"),
    (["{ckpt}", "--seeds", "-3", "--ref", "builtin"], "'-3' is negative"),
    (["{folder}", "--batch", "0"], "--batch must be at least 1"),
    (["{folder}", "--ref", "{junk}"], "could not be read as a numpy .npz archive"),
    (["{junk}"], "could not be read as a numpy .npz archive"),
    (["--make-ref", "{folder}", "--name", "x", "--num", "5"], "--num with --make-ref sets how many built-in images"),
])
def test_fid_argument_mistakes(fid, ckpt, tmp_path, args, message):
    places = {"{ckpt}": str(ckpt), "{folder}": str(write_folder(tmp_path / "s", random_images(4))),
              "{junk}": str(write_npz(tmp_path / "junk.npz", "junk"))}
    before = files_under(tmp_path)
    assert_one_sentence(fid(*[places.get(a, a) for a in args]), message)
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("how", ["--ref builtin", "recorded in samples.json", "checkpoint"])
def test_builtin_reference_follows_the_number_of_samples_and_warns_first(cli, fid, ckpt, tmp_path, monkeypatch, how):
    """A handful of samples gets a handful of built-in reference images (not 50,000), the warning comes before
    the reference is drawn, and the record keeps the counts and the warnings."""
    from loracli.cli import fid as fid_cli
    from loracli.data.builtin import BuiltinShapes

    events: list[str] = []
    load, warn = BuiltinShapes.load, fid_cli.warn
    monkeypatch.setattr(BuiltinShapes, "load", lambda self, i: events.append("draw") or load(self, i))
    monkeypatch.setattr(fid_cli, "warn", lambda message: events.append(message) or warn(message))
    samples, ref_args = tmp_path / "s", ["--ref", "builtin"] if how == "--ref builtin" else []

    def score(n: int):
        if how == "checkpoint":
            return fid(ckpt, "-n", n, "--steps", "2"), ckpt.parent / "nano.fid-builtin-shapes.json"
        sampled = cli("sample", ckpt, "--seeds", f"0-{n - 1}", "--outdir", samples, "--steps", "2", "--no-grid")
        assert sampled.exit_code == 0, sampled.output  # samples.json records the checkpoint's built-in data
        return fid(samples, *ref_args), samples / "fid-builtin-shapes.json"

    for n in (5, 7):
        events.clear()
        result, path = score(n)
        assert result.exit_code == 0, result.output
        record = json.loads(path.read_text())
        assert events.count("draw") == n  # the reference: n built-in images, drawn once
        assert events[0].startswith(f"Scoring only {n} images: with 2,048 or fewer the covariance")
        assert record["n"] == n and record["reference"]["n"] == n
        assert record["warnings"] == [m for m in events if m != "draw"] and len(record["warnings"]) == 2
        assert f"Warning: Scoring only {n} images" in result.output
        assert f"Warning: The reference 'builtin-shapes' has only {n} images" in result.output
    events.clear()
    assert score(7)[0].exit_code == 0
    assert "draw" not in events  # cached: the second time nothing is drawn


def test_size_warnings_by_count():
    sizes = SizeCheck()
    sizes.samples(50_000)
    assert sizes.messages == []
    sizes.samples(10_000)
    assert sizes.messages == ["Scoring 10,000 images, fewer than the usual protocol's 50,000: FID is biased upward "
                              "at small n, so compare this number only with FIDs of 10,000 images."]
    sizes.samples(2_048)
    assert "singular" in sizes.messages[-1]
