"""``torch.save`` files read without ``torch.load``: the zip archive (torch >= 1.6) and the legacy stream.

``torch.load(weights_only=True)`` hands the file's pickle to an unpickler without limits (a nested-tuple dict
key crashes the interpreter) and sizes storages by what the file declares. Here every pickle is checked by
:func:`~loracli.io.convert.pickle_scan.scan` and unpickled by the restricted unpickler, and every storage is
checked against the bytes that really back it before anything is allocated:

- zip archive: ``<name>/data.pkl`` plus one record ``<name>/data/<key>`` per storage; records must be stored
  uncompressed (as ``torch.save`` writes them) and lie inside the file, and a storage's declared size must
  equal its record's;
- legacy stream (also the storage blobs inside NVlabs/edm pickles): magic number, protocol, system info, the
  object, the list of storage keys, then each storage as an 8-byte element count and its bytes; the
  declared storages together may not be larger than the bytes left in the stream.
"""

from __future__ import annotations

import mmap
import pickle
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from loracli.io.convert.pickle_scan import scan

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


def _storage_id(pid: tuple, length: int) -> tuple[str, torch.dtype, int]:
    """``(key, dtype, numel)`` of a storage persistent id ``('storage', type, key, location, numel[, view])``."""
    from loracli.io.convert.unpickle import _StorageType

    if not (isinstance(pid, tuple) and len(pid) == length and pid[0] == "storage" and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str) and type(pid[4]) is int and pid[4] >= 0):
        raise pickle.UnpicklingError("unexpected persistent id")
    if length == 6 and pid[5] is not None:
        raise pickle.UnpicklingError("storage views are not supported")
    return pid[2], pid[1].dtype, pid[4]


def _typed(untyped: torch.UntypedStorage, dtype: torch.dtype) -> torch.storage.TypedStorage:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


def _unpickle(data: bytes | mmap.mmap, start: int, inert_classes: Iterable[str],
              extra_globals: Mapping[str, Any] | None,
              persistent_load: Callable[[Any], Any] | None = None) -> tuple[Any, int]:
    """The object pickled at ``data[start:]`` (checked first) and the offset just past it."""
    from loracli.io.convert.unpickle import loads

    end = scan(data, start)
    return loads(memoryview(data)[start:end], inert_classes, extra_globals, persistent_load, checked=True), end


def read_legacy(data: bytes | mmap.mmap, inert_classes: Iterable[str] = (),
                extra_globals: Mapping[str, Any] | None = None) -> Any:
    """The object in a legacy ``torch.save`` stream (see the module docstring)."""
    magic, pos = _unpickle(data, 0, (), None)
    protocol, pos = _unpickle(data, pos, (), None)
    if magic != LEGACY_MAGIC or protocol != LEGACY_PROTOCOL:
        raise pickle.UnpicklingError("not a torch.save stream (wrong magic number)")
    info, pos = _unpickle(data, pos, (), None)
    if not isinstance(info, dict) or info.get("little_endian") is False:
        raise pickle.UnpicklingError("saved on a big-endian machine, or with a corrupt header")
    storages: dict[str, torch.storage.TypedStorage] = {}
    declared = 0

    def persistent_load(pid: Any) -> Any:
        nonlocal declared
        key, dtype, numel = _storage_id(pid, 6)
        if key not in storages:
            declared += numel * torch._utils._element_size(dtype)
            if declared > len(data):
                raise pickle.UnpicklingError("storages larger than the file that holds them")
            storages[key] = _typed(torch.UntypedStorage(numel * torch._utils._element_size(dtype)), dtype)
        elif storages[key].dtype != dtype:
            raise pickle.UnpicklingError(f"storage {key} used with two element types")
        return storages[key]

    obj, pos = _unpickle(data, pos, inert_classes, extra_globals, persistent_load)
    keys, pos = _unpickle(data, pos, (), None)
    if not isinstance(keys, list) or sorted(keys) != sorted(storages) or len(set(keys)) != len(keys):
        raise pickle.UnpicklingError("the storage list does not match the storages used")
    for key in keys:
        storage = storages[key]
        (count,) = struct.unpack_from("<q", data, pos)
        nbytes = storage.nbytes()
        pos += 8
        if count != storage.size() or pos + nbytes > len(data):
            raise pickle.UnpicklingError(f"storage {key} is cut off or of the wrong size")
        if nbytes:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*not writable.*")
                source = torch.frombuffer(data, dtype=torch.uint8, count=nbytes, offset=pos)
            torch.empty(0, dtype=torch.uint8).set_(storage._untyped_storage).copy_(source)
        pos += nbytes
    return obj


def torch_zip_pickle(archive: zipfile.ZipFile) -> str:
    """The name of the pickle inside a torch zip archive (``<archive>/data.pkl``)."""
    names = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(names) != 1:
        raise pickle.UnpicklingError("not a torch archive (no single <name>/data.pkl)")
    return names[0]


def _read_record(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytearray:
    """A record's bytes (its size was checked against the file before)."""
    buffer = bytearray(info.file_size)
    with archive.open(info) as f:
        view, done = memoryview(buffer), 0
        while done < len(buffer):
            n = f.readinto(view[done:])
            if not n:
                raise zipfile.BadZipFile(f"record {info.filename} is cut off")
            done += n
    return buffer


def read_zip(path: Path, inert_classes: Iterable[str] = (), extra_globals: Mapping[str, Any] | None = None,
             big_endian: Callable[[], Exception] | None = None) -> Any:
    """The object in a torch zip archive (see the module docstring)."""
    size = Path(path).stat().st_size
    with zipfile.ZipFile(path) as archive:
        records = {}
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size \
                    or info.header_offset + info.file_size > size:
                raise zipfile.BadZipFile(f"record {info.filename} is compressed or reaches past the end of the file")
            records[info.filename] = info
        name = torch_zip_pickle(archive)
        prefix = name[: -len("data.pkl")]
        order = records.get(f"{prefix}byteorder")
        if order is not None and bytes(_read_record(archive, order)).strip() != b"little":
            raise (big_endian() if big_endian else pickle.UnpicklingError("saved on a big-endian machine"))
        loaded: dict[str, torch.storage.TypedStorage] = {}

        def persistent_load(pid: Any) -> Any:
            key, dtype, numel = _storage_id(pid, 5)
            if key not in loaded:
                info = records.get(f"{prefix}data/{key}")
                nbytes = numel * torch._utils._element_size(dtype)
                if info is None or info.file_size != nbytes:
                    raise pickle.UnpicklingError(f"storage {key} declares {nbytes:,} bytes its record does not hold")
                untyped = (torch.frombuffer(_read_record(archive, info), dtype=torch.uint8).untyped_storage()
                           if nbytes else torch.UntypedStorage(0))
                loaded[key] = _typed(untyped, dtype)
            elif loaded[key].dtype != dtype:
                raise pickle.UnpicklingError(f"storage {key} used with two element types")
            return loaded[key]

        data = bytes(_read_record(archive, records[name]))
        obj, _ = _unpickle(data, 0, inert_classes, extra_globals, persistent_load)
        return obj


def read_torch_file(path: Path, inert_classes: Iterable[str] = (),
                    extra_globals: Mapping[str, Any] | None = None) -> Any:
    """The object in any ``torch.save`` file: a zip archive or a legacy stream."""
    if zipfile.is_zipfile(path):
        return read_zip(path, inert_classes, extra_globals)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        return read_legacy(mapped, inert_classes, extra_globals)  # mapped, not read: storages are copied once
