"""A restricted unpickler for NVlabs/edm-style pickles: data comes out, no code from the file ever runs.

EDM's ``persistence`` pickles embed the source of the defining module and the stock loader executes it. Here
every global the pickle names is looked up in an exact allow-list *before* anything is called:

- tensor rebuild functions and ``OrderedDict`` are the real ones; a storage blob
  (``torch.storage._load_from_bytes``) is decoded with ``torch.load(weights_only=True)``;
- ``torch_utils.persistence._reconstruct_persistent_obj`` gives a :class:`PersistentRecord` (class name and
  state; the embedded source is an opaque string, hashed for provenance and never executed);
- listed classes (``torch.nn.modules.container.ModuleDict``, ...) give :class:`InertRecord` objects that only
  store the state they receive;
- anything else (``os.system``, ``builtins.eval``, ...) raises :class:`ForbiddenGlobal`.

Callers extend the allow-list per call (``inert_classes``, ``extra_globals``), e.g. for the LoRA layers of
lthilnklover/diffusion_lora. :func:`load_file` reads plain pickles and torch zip archives
(``training-state-*.pt``) and turns every failure into a one-sentence :class:`UserError`.
"""

from __future__ import annotations

import collections
import hashlib
import importlib
import io
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch

from loracli.errors import UserError

# Non-persistent torch.nn classes that EDM-style networks contain, by qualified name.
INERT_CLASSES: frozenset[str] = frozenset({
    "torch.nn.modules.container.ModuleDict",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.activation.SiLU",
})

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's archives are zip files

# Storage classes a torch zip archive names for its tensors' data, with their element types.
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "torch.FloatStorage": torch.float32, "torch.DoubleStorage": torch.float64, "torch.HalfStorage": torch.float16,
    "torch.BFloat16Storage": torch.bfloat16, "torch.LongStorage": torch.int64, "torch.IntStorage": torch.int32,
    "torch.ShortStorage": torch.int16, "torch.CharStorage": torch.int8, "torch.ByteStorage": torch.uint8,
    "torch.BoolStorage": torch.bool, "torch.UntypedStorage": torch.uint8,
}


class ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list; raised before anything is called."""

    def __init__(self, name: str) -> None:
        super().__init__(f"refusing to load global '{name}'")
        self.name = name


class Record:
    """An object of the pickled network, reduced to data: its class name and its ``__dict__`` state."""

    class_name: str = ""
    state: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> "Record":
        obj = super().__new__(cls)
        obj.state = {}
        return obj

    def __setstate__(self, state: Any) -> None:  # BUILD: keep the state, run nothing
        self.state = state if isinstance(state, dict) else {"__state__": state}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.class_name}>"


class PersistentRecord(Record):
    """What ``torch_utils.persistence`` pickled: ``class_name``, ``version``, ``state``, and the source text
    of the defining module, kept only as an opaque string (see :attr:`source_sha256`)."""

    def __init__(self, meta: Mapping[str, Any]) -> None:
        if not isinstance(meta, Mapping) or not isinstance(meta.get("class_name"), str):
            raise pickle.UnpicklingError("malformed persistent object")
        self.class_name = meta["class_name"]
        self.version = meta.get("version")
        self.state = dict(meta.get("state") or {})
        self.module_src = str(meta.get("module_src") or "")

    @property
    def source_sha256(self) -> str:
        return hashlib.sha256(self.module_src.encode("utf-8")).hexdigest()


class InertRecord(Record):
    """An allowed non-persistent class (e.g. ``ModuleDict``) stood in for by a record; subclassed per name."""


class EasyDict(dict):
    """``dnnlib.util.EasyDict`` as a plain dict."""


class _StorageType:
    """What a storage class name in a torch zip archive stands for: the element type of its data."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _numpy_scalar() -> Callable[..., Any]:
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):  # numpy 2 and numpy 1 spellings
        try:
            return importlib.import_module(module).scalar
        except (ImportError, AttributeError):
            continue
    raise ImportError("numpy has no multiarray.scalar")


def _storage_from_bytes(data: bytes) -> Any:
    """``torch.storage._load_from_bytes`` without its ``weights_only=False``: the blob holds only a storage."""
    try:
        storage = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found:  # torch's own allow-list refused a global inside the blob
            raise ForbiddenGlobal(found.group(1)) from None
        raise
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError("a storage blob holds something other than a storage")
    return storage


def _base_globals() -> dict[str, Any]:
    import numpy as np

    scalar = _numpy_scalar()
    found: dict[str, Any] = {
        "collections.OrderedDict": collections.OrderedDict,
        "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
        "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
        "torch.storage._load_from_bytes": _storage_from_bytes,
        "torch_utils.persistence._reconstruct_persistent_obj": PersistentRecord,
        "dnnlib.util.EasyDict": EasyDict,
        "numpy.dtype": np.dtype,
        "numpy.core.multiarray.scalar": scalar,
        "numpy._core.multiarray.scalar": scalar,
        # Protocol 2 (torch.save) spells sets and bytes through these.
        "builtins.set": set, "__builtin__.set": set, "builtins.frozenset": frozenset,
        "__builtin__.frozenset": frozenset, "_codecs.encode": _latin1_encode,
    }
    found.update({name: _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()})
    return found


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol 2 uses it (str -> bytes), limited to that use."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("unexpected use of _codecs.encode")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose global lookup only resolves the allow-list (see the module docstring)."""

    def __init__(self, file: Any, inert_classes: Iterable[str] = (), extra_globals: Mapping[str, Any] | None = None,
                 persistent_load: Callable[[Any], Any] | None = None) -> None:
        super().__init__(file)
        self._globals = {**_base_globals(), **dict(extra_globals or {})}
        self._inert = INERT_CLASSES | frozenset(inert_classes)
        self._inert_types: dict[str, type] = {}
        self._persistent_load = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        if qualified in self._globals:
            return self._globals[qualified]
        if qualified in self._inert:
            if qualified not in self._inert_types:
                self._inert_types[qualified] = type(name, (InertRecord,), {"class_name": qualified})
            return self._inert_types[qualified]
        raise ForbiddenGlobal(qualified)

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent_load is None:
            raise pickle.UnpicklingError("unexpected persistent id in a plain pickle")
        return self._persistent_load(pid)


def _zip_storage_loader(archive: zipfile.ZipFile, prefix: str) -> Callable[[Any], Any]:
    """``persistent_load`` for a torch zip archive: ``('storage', type, key, location, numel)`` -> storage."""
    loaded: dict[str, Any] = {}

    def load(pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise pickle.UnpicklingError("unexpected persistent id in a torch archive")
        key = pid[2]
        if key not in loaded:
            data = bytearray(archive.read(f"{prefix}data/{key}"))
            untyped = torch.UntypedStorage.from_buffer(data, dtype=torch.uint8) if data else torch.UntypedStorage(0)
            loaded[key] = torch.storage.TypedStorage(wrap_storage=untyped, dtype=pid[1].dtype, _internal=True)
        return loaded[key]

    return load


def is_torch_zip(path: str | Path) -> bool:
    """A complete zip archive (what ``torch.save`` writes); a truncated one is not."""
    return zipfile.is_zipfile(path)


def torch_zip_pickle(archive: zipfile.ZipFile) -> str:
    """The name of the pickle inside a torch zip archive (``<archive>/data.pkl``)."""
    names = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(names) != 1:
        raise pickle.UnpicklingError("not a torch archive (no single <name>/data.pkl)")
    return names[0]


def loads(data: bytes | io.BufferedIOBase, inert_classes: Iterable[str] = (),
          extra_globals: Mapping[str, Any] | None = None,
          persistent_load: Callable[[Any], Any] | None = None) -> Any:
    """Unpickle ``data`` (bytes or a binary file) under the allow-list; raises pickle/EOF/torch errors."""
    file = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        return RestrictedUnpickler(file, inert_classes, extra_globals, persistent_load).load()


def load_file(path: str | Path, inert_classes: Iterable[str] = (),
              extra_globals: Mapping[str, Any] | None = None) -> Any:
    """The object pickled in ``path`` -- a plain pickle or a torch zip archive -- under the allow-list.

    Every failure is a :class:`UserError` of one sentence: a forbidden global (nothing was run), or a
    truncated/corrupt file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            is_zip = f.read(len(ZIP_MAGIC)) == ZIP_MAGIC
        if is_zip:
            with zipfile.ZipFile(path) as archive:
                name = torch_zip_pickle(archive)
                prefix = name[: -len("data.pkl")]
                byteorder = f"{prefix}byteorder"
                if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
                    raise UserError(f"'{path}' was saved on a big-endian machine, which loracli cannot read.")
                with archive.open(name) as pkl:
                    return loads(pkl, inert_classes, extra_globals, _zip_storage_loader(archive, prefix))
        with open(path, "rb") as f:
            return loads(f, inert_classes, extra_globals)
    except ForbiddenGlobal as exc:
        raise UserError(
            f"'{path}' asks to run '{exc.name}', which a network checkpoint never needs; it was refused "
            "before anything from the file ran."
        ) from None
    except OSError as exc:
        raise UserError(f"'{path}' cannot be read ({exc.strerror or exc}).") from None
    except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, KeyError, ValueError,
            TypeError, AttributeError, IndexError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"'{path}' is truncated or corrupt and cannot be read ({detail}).") from None


def state_dict(record: Record, prefix: str = "") -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a recorded module: its parameters and persistent buffers, then its submodules'."""
    state = record.state
    out: dict[str, torch.Tensor] = {}
    for name, tensor in (state.get("_parameters") or {}).items():
        if tensor is not None:
            out[prefix + name] = tensor.detach()
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for name, tensor in (state.get("_buffers") or {}).items():
        if tensor is not None and name not in skip:
            out[prefix + name] = tensor.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            if not isinstance(child, Record):
                raise UserError(f"The pickled network holds an unexpected object at '{prefix}{name}'.")
            out.update(state_dict(child, f"{prefix}{name}."))
    return out


def walk(record: Record) -> Iterator[Record]:
    """``record`` and every recorded submodule below it, depth first."""
    yield record
    for child in (record.state.get("_modules") or {}).values():
        if isinstance(child, Record):
            yield from walk(child)
