"""A restricted unpickler for NVlabs/edm-style pickles: data comes out, no code from the file ever runs.

EDM's ``persistence`` pickles embed the source of the defining module and the stock loader executes it. Here
every global the pickle names is looked up in an exact allow-list *before* anything is called:

- tensor rebuild functions and ``OrderedDict`` are the real ones; a storage blob
  (``torch.storage._load_from_bytes``) is decoded by loracli's bounded reader (``torch_archive``);
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
import warnings
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping

import torch

from loracli.errors import UserError
from loracli.io.convert.pickle_scan import UnsafePickle, scan
from loracli.io.convert.torch_archive import torch_zip_pickle  # noqa: F401 -- re-exported for the readers

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
    """numpy's ``multiarray.scalar``, for plain (not object) dtypes with exactly their bytes."""
    import numpy as np

    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):  # numpy 2 and numpy 1 spellings
        try:
            scalar = importlib.import_module(module).scalar
        except (ImportError, AttributeError):
            continue

        def checked(dtype: Any, data: Any = None) -> Any:
            if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes) \
                    or len(data) != dtype.itemsize:
                raise pickle.UnpicklingError("a malformed numpy scalar")
            return scalar(dtype, data)

        return checked
    raise ImportError("numpy has no multiarray.scalar")


def _storage_from_bytes(data: bytes) -> Any:
    """``torch.storage._load_from_bytes`` read by loracli's own bounded reader of torch's legacy format (torch's
    loader would unpickle the blob without limits); the blob must hold one storage."""
    from loracli.io.convert.torch_archive import read_legacy

    storage = read_legacy(bytes(data))
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError("a storage blob holds something other than a storage")
    return storage


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` once the view is checked to lie inside its storage (torch's own would
    grow the storage to fit whatever size the file declares); backward hooks and metadata from the file are
    dropped."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError("a tensor without a storage")
    ints = (offset, *size, *stride) if isinstance(size, tuple) and isinstance(stride, tuple) else None
    if ints is None or len(size) != len(stride) or len(size) > 16 or not all(
            type(v) is int and v >= 0 for v in ints):
        raise pickle.UnpicklingError("a tensor with a malformed shape")
    end = offset + (sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0)
    if end > storage.size():
        raise pickle.UnpicklingError(f"a tensor reaches past its storage ({end:,} > {storage.size():,} elements)")
    requires_grad = rest[0] if rest and isinstance(rest[0], bool) else False
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, collections.OrderedDict())


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> torch.nn.Parameter:
    if not isinstance(data, torch.Tensor) or not isinstance(requires_grad, bool):
        raise pickle.UnpicklingError("a parameter without a tensor")
    return torch._utils._rebuild_parameter(data, requires_grad, collections.OrderedDict())


def _base_globals() -> dict[str, Any]:
    import numpy as np

    scalar = _numpy_scalar()
    found: dict[str, Any] = {
        "collections.OrderedDict": collections.OrderedDict,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
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


def is_torch_zip(path: str | Path) -> bool:
    """A complete zip archive (what ``torch.save`` writes); a truncated one is not."""
    return zipfile.is_zipfile(path)


def loads(data: bytes | memoryview | BinaryIO, inert_classes: Iterable[str] = (),
          extra_globals: Mapping[str, Any] | None = None,
          persistent_load: Callable[[Any], Any] | None = None, checked: bool = False) -> Any:
    """Unpickle ``data`` (bytes, or a seekable binary file read from its start) under the allow-list, after
    :func:`pickle_scan.scan` has checked it (``checked``: the caller did); raises pickle/EOF/torch errors."""
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if not checked:
        scan(stream)
    stream.seek(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        return RestrictedUnpickler(stream, inert_classes, extra_globals, persistent_load).load()


def load_file(path: str | Path, inert_classes: Iterable[str] = (),
              extra_globals: Mapping[str, Any] | None = None) -> Any:
    """The object pickled in ``path`` -- a plain pickle or a torch zip archive -- under the allow-list.

    Every failure is a :class:`UserError` of one sentence: a forbidden global (nothing was run), a stream
    built to exhaust the reader (refused before unpickling), or a truncated/corrupt file.
    """
    from loracli.io.convert.torch_archive import read_zip

    path = Path(path)

    def big_endian() -> UserError:
        return UserError(f"'{path}' was saved on a big-endian machine, which loracli cannot read.")

    try:
        with open(path, "rb") as f:
            is_zip = f.read(len(ZIP_MAGIC)) == ZIP_MAGIC
        if is_zip:
            return read_zip(path, inert_classes, extra_globals, big_endian)
        with open(path, "rb") as f:
            return loads(f, inert_classes, extra_globals)  # scanned, then read, from the file: never copied whole
    except Exception as exc:  # noqa: BLE001 -- whatever a hostile file makes the reader raise is one sentence
        raise refusal(path, exc) from None


def refusal(path: Path, exc: BaseException) -> UserError:
    """The one-sentence :class:`UserError` for a reader failure on ``path``."""
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, ForbiddenGlobal):
        return UserError(f"'{path}' asks to run '{exc.name}', which a network checkpoint never needs; it was "
                         "refused before anything from the file ran.")
    detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, UnsafePickle):
        return UserError(f"'{path}' is truncated or corrupt, or built to exhaust the reader ({detail}); it was "
                         "refused before anything was unpickled.")
    if isinstance(exc, RecursionError):
        return UserError(f"'{path}' nests its objects too deeply to be a network checkpoint; it was refused.")
    if isinstance(exc, MemoryError):
        return UserError(f"'{path}' declares more data than fits in memory; it was refused.")
    if isinstance(exc, OSError) and not isinstance(exc, zipfile.BadZipFile):
        return UserError(f"'{path}' cannot be read ({exc.strerror or detail}).")
    return UserError(f"'{path}' is truncated or corrupt and cannot be read ({detail}).")


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
