"""CIFAR-10's python batches, read with an unpickler that only rebuilds numpy arrays."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from loracli.data import open_dataset
from loracli.data.cifar import TRAIN_BATCHES
from loracli.errors import UserError


def write_batches(folder, per_batch: int = 3, protocol: int = 2) -> np.ndarray:
    """Five tiny batches in CIFAR's layout: uint8 rows of 3072 values in CHW order, plus labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for k, name in enumerate(TRAIN_BATCHES):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [(k * per_batch + i) % 10 for i in range(per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": f"training batch {k + 1} of 5", "labels": labels, "data": data,
                         "filenames": [f"img{i}.png" for i in range(per_batch)]}, f, protocol=protocol)
        rows.append(data)
    (folder / "test_batch").write_bytes(b"not read")
    return np.concatenate(rows)


@pytest.mark.parametrize("protocol", [2, 4])
def test_reads_the_five_training_batches(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    rows = write_batches(folder, protocol=protocol)
    data = open_dataset(folder)
    assert (data.name, len(data), data.resolution, data.label_dim) == ("cifar10", 15, 32, 10)
    image, label = data[4]
    assert image.shape == (3, 32, 32) and label == 4
    assert np.array_equal(image[1, 2, 3], rows[4, 1024 + 2 * 32 + 3])  # CHW rows: channel, row, column
    assert open_dataset(tmp_path).source == str(folder)  # the parent folder works too


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_a_pickle_naming_code_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    write_batches(folder)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({"data": Exploit(), "labels": []}, f)
    with pytest.raises(UserError, match="data_batch_3' is not a CIFAR-10 python batch .*system"):
        open_dataset(folder)
    assert not (tmp_path / "pwned.txt").exists()


def test_missing_or_wrong_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_batches(folder)
    (folder / "data_batch_5").unlink()
    with pytest.raises(UserError, match="lacks data_batch_5; download cifar-10-python.tar.gz"):
        open_dataset(folder)
    with open(folder / "data_batch_5", "wb") as f:
        pickle.dump({"data": np.zeros((2, 10), np.uint8), "labels": [0, 1]}, f)
    with pytest.raises(UserError, match="does not hold CIFAR-10 images"):
        open_dataset(folder)
    (folder / "data_batch_5").write_bytes(b"\x80\x02truncated")
    with pytest.raises(UserError, match="not a CIFAR-10 python batch"):
        open_dataset(folder)


@pytest.mark.parametrize("payload, why", [
    # a tuple nested 100,000 deep used as a dict key: hashing it crashes the interpreter
    (b"\x80\x02}" + b"(" * 100_000 + b"t" * 100_000 + b"K\x00s.", "nested more than"),
    (b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".", "nested more than"),  # a deeply nested list
    (b"\x80\x04\x8e" + (2**62).to_bytes(8, "little") + b".", "larger than the 12-byte stream"),  # BINBYTES8 of 4 EiB
])
def test_a_batch_built_to_exhaust_the_reader_is_refused_before_it_is_unpickled(tmp_path, payload, why):
    folder = tmp_path / "cifar-10-batches-py"
    write_batches(folder)
    (folder / "data_batch_2").write_bytes(payload)
    with pytest.raises(UserError, match=f"data_batch_2' is not a CIFAR-10 python batch .*{why}"):
        open_dataset(folder)
