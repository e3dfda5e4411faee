"""``loracli sample`` end to end: one PNG per seed as EDM names them, grid, npz, provenance, errors, and
torchrun sharding (two gloo processes write what one process writes)."""

from __future__ import annotations

import json
import lzma
import os
import socket
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

import loracli

FIXTURES = Path(__file__).parent / "fixtures"
DATA = {"path": "/data/shapes.zip", "name": "shapes", "builtin": False, "resolution": 8, "label_dim": 3}


def tiny_nano(label_dim: int = 3):
    torch.manual_seed(0)
    return loracli.create_model("nano", model_channels=8, channel_mult=(1, 2), img_resolution=8, label_dim=label_dim,
                                channels_per_head=8, attn_resolutions=(4,), diffusion_steps=20)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "nano.safetensors"
    loracli.save(tiny_nano(), path, step=7, ema=True, extra={"data": DATA})
    return path


def read_png(path: Path) -> np.ndarray:
    return np.asarray(PIL.Image.open(path)).transpose(2, 0, 1)


def test_one_png_per_seed_with_grid_npz_and_provenance(cli, ckpt, tmp_path):
    out = tmp_path / "out"
    result = cli("sample", ckpt, "--seeds", "0-9", "--outdir", out, "--steps", "3", "--npz")
    assert result.exit_code == 0, result.output
    expected = loracli.sample(loracli.load(ckpt), range(10), steps=3)
    for seed in range(10):
        assert np.array_equal(read_png(out / f"{seed:06d}.png"), expected[seed].numpy())
    grid = np.asarray(PIL.Image.open(out / "grid.png"))
    assert grid.shape == (3 * 8, 4 * 8, 3)  # 10 images: 4 columns, 3 rows
    assert np.array_equal(grid[8:16, 0:8], expected[4].permute(1, 2, 0).numpy())
    with np.load(out / "samples_10x8x8x3.npz") as npz:
        assert np.array_equal(npz["arr_0"], expected.permute(0, 2, 3, 1).numpy())
        assert npz["arr_1"].dtype == np.int64 and npz["arr_1"].shape == (10,) and npz["arr_1"].max() < 3
    record = json.loads((out / "samples.json").read_text())
    assert record["seeds"] == "0-9" and record["num"] == 10
    assert record["sampling"] == {"sampler": "ancestral", "steps": 3, "nfe": 3}
    assert record["precision"] == "fp32" and record["image_shape"] == [3, 8, 8]
    checkpoint = record["checkpoint"]
    assert checkpoint["data"] == DATA and checkpoint["model"] == "nano" and checkpoint["step"] == 7
    assert checkpoint["ema"] is True and len(checkpoint["header_sha256"]) == 64
    assert record["loracli_version"] == loracli.__version__


def test_subdirs_per_thousand_seeds_and_no_grid(cli, ckpt, tmp_path):
    result = cli("sample", ckpt, "--seeds", "998-1001", "--subdirs", "--no-grid", "--outdir", tmp_path, "--steps", "2")
    assert result.exit_code == 0, result.output
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.png")) == [
        "000000/000998.png", "000000/000999.png", "001000/001000.png", "001000/001001.png"]


def test_soft_class_is_recorded_and_labels_are_vectors(cli, ckpt, tmp_path):
    result = cli("sample", ckpt, "--seeds", "0-3", "--class", "0:0.5,2:0.5", "--outdir", tmp_path, "--steps", "2",
                 "--npz", "--no-grid")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "samples.json").read_text())["class"] == {"0": 0.5, "2": 0.5}
    with np.load(tmp_path / "samples_4x8x8x3.npz") as npz:
        assert np.array_equal(npz["arr_1"], np.tile([0.5, 0, 0.5], (4, 1)).astype(np.float32))
    expected = loracli.sample(loracli.load(ckpt), range(4), class_labels={0: 0.5, 2: 0.5}, steps=2)
    assert np.array_equal(read_png(tmp_path / "000002.png"), expected[2].numpy())


@pytest.mark.parametrize("args, message", [
    (["--class", "3"], "Class 3 is out of range; this model has classes 0..2."),
    (["--class", "1:0.5,7:0.5"], "Class 7 is out of range"),
    (["--class", "two"], "Cannot read --class 'two'"),
    (["--sampler", "heun"], "does not fit this ddpm-family model"),
    (["--seeds", "5-1"], "Cannot read seeds"),
    (["--s-churn", "10"], "do not apply to a ddpm-family model"),
])
def test_mistakes_exit_2_with_one_sentence_and_write_nothing(cli, ckpt, tmp_path, args, message):
    result = cli("sample", ckpt, "--outdir", tmp_path / "out", *args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_class_on_an_unconditional_model(cli, tmp_path):
    path = loracli.save(tiny_nano(label_dim=0), tmp_path / "uncond.safetensors")
    result = cli("sample", path, "--class", "1", "--outdir", tmp_path / "out")
    assert result.exit_code == 2 and "unconditional" in result.output


def test_edm_checkpoint_gives_the_reference_images(cli, tmp_path):
    """A converted NVlabs/edm network sampled through the CLI equals the reference generate.py's output."""
    from loracli.io.convert import convert_model

    pkl = tmp_path / "net.pkl"
    pkl.write_bytes(lzma.decompress((FIXTURES / "edm" / "ddpmpp-edm-cond.pkl.xz").read_bytes()))
    path = loracli.save(convert_model(pkl), tmp_path / "edm.safetensors")
    result = cli("sample", path, "--seeds", "0-5", "--outdir", tmp_path / "out", "--batch", "4")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "samples.json").read_text())["sampling"]["nfe"] == 35
    expected = np.load(FIXTURES / "sampling" / "edm_networks.npz")["cond_heun/images"]
    ours = np.stack([read_png(tmp_path / "out" / f"{s:06d}.png") for s in range(6)])
    assert np.abs(ours.astype(int) - expected).max() <= 1


def _rank_main(rank: int, world: int, port: int, ckpt: str, outdir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from loracli.cli.sample import write_samples
    from loracli.train.distributed import start, stop

    process = start("cpu")
    write_samples(loracli.load(ckpt), list(range(11)), Path(outdir), steps=2, batch=2, npz=True, progress=False,
                  device=process.device)
    stop(process)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_write_what_one_process_writes(ckpt, tmp_path):
    from loracli.cli.sample import write_samples

    write_samples(loracli.load(ckpt), list(range(11)), tmp_path / "one", steps=2, batch=2, npz=True, progress=False)
    torch.multiprocessing.spawn(_rank_main, args=(2, free_port(), str(ckpt), str(tmp_path / "two")), nprocs=2)
    one = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert one == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in one:
        if name != "samples.json":
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert json.loads((tmp_path / "two" / "samples.json").read_text())["world_size"] == 2
