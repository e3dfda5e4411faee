"""EDM dataset zips and image folders (PNG and JPEG), with clear errors for anything else."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import PIL.Image
import pytest

from loracli.data import Mirrored, open_dataset
from loracli.errors import UserError


def encode(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format=fmt, **({"quality": 100} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def image(value: int, size: int = 8) -> np.ndarray:
    """A distinguishable HWC image: a ramp across x, offset by ``value``."""
    ramp = np.arange(size, dtype=np.uint8)[None, :, None] * 10
    return np.broadcast_to(ramp + value, (size, size, 3)).astype(np.uint8).copy()


def make_zip(path, entries: dict[str, bytes], labels=None) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
        if labels is not None:
            z.writestr("dataset.json", json.dumps({"labels": labels}))


def test_edm_zip_with_labels_png_and_jpeg(tmp_path):
    path = tmp_path / "tiny-8x8.zip"
    make_zip(path, {"00000/img00000001.jpg": encode(image(40), "JPEG"),
                    "00000/img00000000.png": encode(image(0), "PNG")},
             [["00000/img00000000.png", 3], ["00000/img00000001.jpg", 1]])
    data = open_dataset(path)
    assert (data.name, len(data), data.resolution, data.channels, data.label_dim) == ("tiny-8x8", 2, 8, 3, 4)
    png, label0 = data[0]  # sorted by name: the PNG first, as EDM reads them
    assert png.shape == (3, 8, 8) and png.dtype == np.uint8 and label0 == 3
    assert np.array_equal(png, image(0).transpose(2, 0, 1))  # lossless, CHW
    jpg, label1 = data[1]
    assert label1 == 1 and np.abs(jpg.astype(int) - image(40).transpose(2, 0, 1)).max() <= 4
    assert data.provenance() == {"path": str(path), "name": "tiny-8x8", "builtin": False, "resolution": 8,
                                 "label_dim": 4}


def test_zip_without_labels_is_unlabelled(tmp_path):
    path = tmp_path / "plain.zip"
    make_zip(path, {"a.png": encode(image(0), "PNG")})
    data = open_dataset(path)
    assert data.label_dim == 0 and data[0][1] == -1
    null = tmp_path / "null.zip"
    make_zip(null, {"a.png": encode(image(0), "PNG")}, labels=None)
    with zipfile.ZipFile(null, "a") as z:
        z.writestr("dataset.json", '{"labels": null}')
    assert open_dataset(null).label_dim == 0


def test_folder_classes_are_sorted_subfolders(tmp_path):
    for cls, value in (("dog", 10), ("cat", 20)):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "x.png").write_bytes(encode(image(value), "PNG"))
    (tmp_path / "cat" / "y.jpeg").write_bytes(encode(image(30), "JPEG"))
    (tmp_path / "notes.txt").write_text("ignored")
    data = open_dataset(tmp_path)
    assert data.label_dim == 2 and len(data) == 3
    assert [data[i][1] for i in range(3)] == [0, 0, 1]  # cat/x.png, cat/y.jpeg, dog/x.png
    assert data[2][0][0, 0, 0] == 10


def test_folder_in_edm_layout_reads_dataset_json(tmp_path):
    (tmp_path / "00000").mkdir()
    (tmp_path / "00000" / "img00000000.png").write_bytes(encode(image(0), "PNG"))
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": [["00000/img00000000.png", 7]]}))
    data = open_dataset(tmp_path)
    assert data.label_dim == 8 and data[0][1] == 7


def test_mirrored_doubles_with_left_right_flips(tmp_path):
    path = tmp_path / "one.zip"
    make_zip(path, {"a.png": encode(image(0), "PNG")}, [["a.png", 0]])
    data = Mirrored(open_dataset(path))
    assert len(data) == 2 and data.label_dim == 1
    assert np.array_equal(data[1][0], data[0][0][:, :, ::-1]) and data[1][1] == 0


@pytest.mark.parametrize("case, message", [
    ("missing", "No data set at"),
    ("text", "neither a zip file nor a folder"),
    ("badzip", "not a readable zip file"),
    ("noimages", "holds no PNG or JPEG images"),
    ("nonsquare", "is 8x6"),
    ("mixed", "resize all images to one square size"),
    ("resolution", "the model needs 32x32"),
    ("badlabels", "has no label for"),
    ("softlabels", "not class indices"),
    ("targz", "extract it first"),
])
def test_malformed_data_gives_one_clear_sentence(tmp_path, case, message):
    path = tmp_path / "data.zip"
    resolution = None
    if case == "missing":
        path = tmp_path / "nothing-here"
    elif case == "text":
        path = tmp_path / "data.csv"
        path.write_text("a,b")
    elif case == "badzip":
        path.write_bytes(b"PK\x03\x04 truncated")
    elif case == "noimages":
        make_zip(path, {"readme.txt": b"hi"})
    elif case == "nonsquare":
        make_zip(path, {"a.png": encode(np.zeros((6, 8, 3), np.uint8), "PNG")})
    elif case == "mixed":
        make_zip(path, {"a.png": encode(image(0), "PNG"), "b.png": encode(image(0, 16), "PNG")})
    elif case == "resolution":
        make_zip(path, {"a.png": encode(image(0), "PNG")})
        resolution = 32
    elif case == "badlabels":
        make_zip(path, {"a.png": encode(image(0), "PNG"), "b.png": encode(image(0), "PNG")}, [["a.png", 0]])
    elif case == "softlabels":
        make_zip(path, {"a.png": encode(image(0), "PNG")}, [["a.png", [0.5, 0.5]]])
    elif case == "targz":
        path = tmp_path / "cifar-10-python.tar.gz"
        path.write_bytes(b"\x1f\x8b")
    with pytest.raises(UserError, match=message) as info:
        data = open_dataset(path, resolution)
        for i in range(len(data)):
            data[i]
    assert str(info.value).count(". ") == 0 and str(info.value).endswith(".")
