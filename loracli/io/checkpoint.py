"""loracli checkpoints: safetensors with the build config as JSON metadata.

A checkpoint alone rebuilds its network: ``load`` reads the metadata, builds the network from the config
(no code from the file runs: safetensors holds only tensors and strings) and loads the tensors strictly.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from loracli.errors import UserError
from loracli.io.atomic import atomic_path

FORMAT = "loracli-checkpoint"


MAX_HEADER_BYTES = 100_000_000
# safetensors' dtype names and their element types; anything else in a header is refused.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def _check_file(path: Path) -> None:
    if not path.exists():
        raise UserError(f"No checkpoint at '{path}'.")
    if path.is_dir():
        raise UserError(f"'{path}' is a folder; pass the checkpoint file inside it (*.safetensors).")


class _DuplicateName(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` hook: a name given twice is an error, not "the last one wins"."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _DuplicateName(f"the name '{key[:100]}' appears twice")
        found[key] = value
    return found


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _check_entry(name: str, entry: Any) -> tuple[int, int]:
    """The ``(start, end)`` data offsets of one tensor entry, after checking its fields and size."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"tensor '{name}' is not an entry of dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise ValueError(f"tensor '{name}' has an unknown dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or len(shape) > 16 or not all(_is_count(n) for n in shape):
        raise ValueError(f"tensor '{name}' has a malformed shape")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(n) for n in offsets) \
            or offsets[0] > offsets[1]:
        raise ValueError(f"tensor '{name}' has malformed data_offsets")
    numel = 1
    for n in shape:
        numel *= n
    if numel * DTYPES[dtype].itemsize != offsets[1] - offsets[0]:
        raise ValueError(f"tensor '{name}' ({dtype} {shape}) does not fill its {offsets[1] - offsets[0]} bytes")
    return offsets[0], offsets[1]


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The safetensors header of ``path`` (tensor table and ``__metadata__``), checked before safetensors sees
    the file: a bounded header length, entries of the right JSON types, dtypes that exist, sizes that match
    shape x dtype, data offsets that tile the data exactly (no overlap, gap, duplicate or trailing byte)."""
    path = Path(path)
    _check_file(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise UserError(f"'{path}' is not a safetensors file (it is {size} bytes long).")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, MAX_HEADER_BYTES):
            raise UserError(f"'{path}' is not a safetensors checkpoint (its header is unreadable).")
        try:
            header = json.loads(f.read(n), object_pairs_hook=_unique_keys)
        except _DuplicateName as exc:
            raise UserError(f"'{path}' is not a valid safetensors checkpoint: {exc}.") from None
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise UserError(f"'{path}' is not a safetensors checkpoint (its header is unreadable).") from None
    if not isinstance(header, dict):
        raise UserError(f"'{path}' is not a safetensors checkpoint (its header is unreadable).")
    try:
        meta = header.get("__metadata__", {})
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise ValueError("__metadata__ is not a table of strings")
        spans = sorted(_check_entry(k, v) for k, v in header.items() if k != "__metadata__")
    except ValueError as exc:
        raise UserError(f"'{path}' is not a valid safetensors checkpoint: {exc}.") from None
    end = 0
    for start, stop in spans:
        if start != end:
            raise UserError(f"'{path}' is not a valid safetensors checkpoint: tensor data "
                            f"{'overlaps' if start < end else 'leaves a gap'} at byte {min(start, end)}.")
        end = stop
    if 8 + n + end > size:
        raise UserError(f"'{path}' is truncated ({size} of {8 + n + end} bytes); it was not written completely.")
    if 8 + n + end < size:
        raise UserError(f"'{path}' is not a valid safetensors checkpoint: {size - 8 - n - end} bytes follow the "
                        "last tensor.")
    return header


def check_config_types(config: Any) -> None:
    """The JSON types a build config must have (``build_model`` checks the names and values)."""
    ok = (isinstance(config, dict) and isinstance(config.get("model"), str)
          and isinstance(config.get("model_config"), dict) and isinstance(config.get("cond", []), list)
          and all(isinstance(n, str) for n in config.get("cond", []))
          and isinstance(config.get("cond_options", {}), dict)
          and all(isinstance(config.get("cond_options", {}).get(n), dict) for n in config.get("cond", []))
          and isinstance(config.get("preset"), (str, type(None)))
          and isinstance(config.get("only_lora", False), bool) and isinstance(config.get("sampling", {}), dict))
    if not ok:
        raise ValueError("its config is not an object of model, model_config, cond and cond_options")


def read_metadata(path: str | os.PathLike, header: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The loracli metadata of a checkpoint: ``config``, ``step``, ``ema``, ``extra`` (parsed JSON); from
    ``header`` when the caller has already read and checked it."""
    meta = (read_header(path) if header is None else header).get("__metadata__") or {}
    if meta.get("format") != FORMAT or "config" not in meta:
        raise UserError(
            f"'{path}' is a safetensors file but not a loracli checkpoint; "
            "convert foreign checkpoints with `loracli convert SRC DST`."
        )
    try:
        info = {
            "config": json.loads(meta["config"]),
            "step": int(meta.get("step", 0)),
            "ema": meta.get("ema", "false") == "true",
            "extra": json.loads(meta.get("extra", "{}")),
            "version": meta.get("loracli_version", "?"),
        }
        check_config_types(info["config"])
        if not isinstance(info["extra"], dict):
            raise ValueError("its extra metadata is not an object")
        info["config"].setdefault("cond", [])
        info["config"].setdefault("cond_options", {})
        return info
    except (ValueError, TypeError, RecursionError) as exc:
        detail = f" ({exc})" if isinstance(exc, ValueError) and str(exc).startswith("its ") else ""
        raise UserError(f"'{path}' has corrupt loracli metadata{detail}.") from None


def tensor_table(header: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``{name: (shape, dtype)}`` of a checked header."""
    return {k: (tuple(v["shape"]), DTYPES[v["dtype"]]) for k, v in header.items() if k != "__metadata__"}


class _SizedOnMeta(torch.overrides.TorchFunctionMode):
    """Tensors created from a size (what weights are made of) go to the meta device; tensors made from data
    (the scalars a preconditioner computes with, ``.item()`` included) stay on the CPU. Unlike
    ``torch.device("meta")`` this builds every model, and a network of any declared size costs no memory."""

    SIZED = frozenset({torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.randint,
                       torch.empty_strided, torch.normal})

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if func in self.SIZED and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def build_skeleton(config: Mapping[str, Any], source: str) -> Any:
    """The network a config describes, with its weights on the meta device: shapes and dtypes, no memory.

    Whatever a hostile config makes the builders raise is one sentence.
    """
    from loracli.build import build_model

    try:
        with _SizedOnMeta():
            return build_model(config)
    except UserError as exc:  # keep it one sentence when it quotes a long error of torch's
        lines = str(exc).strip().splitlines()
        if len(lines) > 1:
            raise UserError(lines[0].rstrip(":, ") + ").") from None
        raise
    except Exception as exc:  # noqa: BLE001 -- a config from a file is user input
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"'{source}' has a config its model cannot build ({detail}).") from None


def check_fits(skeleton: torch.nn.Module, table: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
               source: str, exact_dtype: bool = True) -> None:
    """Refuse tensors whose names, shapes or dtypes differ from the network's, before any is read or any weight
    allocated (the network's size is then bounded by the file's)."""
    own = {k: (tuple(v.shape), v.dtype) for k, v in skeleton.state_dict().items()}
    wanted = sum(v.numel() for v in skeleton.state_dict().values())
    held = sum(math.prod(shape) for shape, _ in table.values())
    if wanted > 2 * held:  # far beyond the file: say so rather than list every shape
        raise UserError(f"'{source}' has a config for a network of {wanted:,} values but holds only {held:,}; "
                        "it was refused before building the network.")
    _refuse_mismatch(own, table, source, exact_dtype)


def _refuse_mismatch(own: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
                     found: Mapping[str, tuple[tuple[int, ...], torch.dtype]], source: str, exact_dtype: bool) -> None:
    missing = [k for k in own if k not in found]
    unexpected = [k for k in found if k not in own]
    common = [k for k in own if k in found]
    shapes = [f"{k} {found[k][0]} vs {own[k][0]}" for k in common if tuple(found[k][0]) != tuple(own[k][0])]

    def differs(a: torch.dtype, b: torch.dtype) -> bool:
        return a != b if exact_dtype or not (a.is_floating_point and b.is_floating_point) else False

    dtypes = [f"{k} {DTYPE_NAMES.get(found[k][1], found[k][1])} vs {DTYPE_NAMES.get(own[k][1], own[k][1])}"
              for k in common if differs(found[k][1], own[k][1])]
    if missing or unexpected or shapes or dtypes:
        detail = describe_key_mismatch(missing, unexpected)
        if shapes:
            detail += ("; " if detail else "") + f"shape mismatch {len(shapes)} ({', '.join(shapes[:4])})"
        if dtypes:
            detail += ("; " if detail else "") + f"dtype mismatch {len(dtypes)} ({', '.join(dtypes[:4])})"
        raise UserError(f"'{source}' does not fit the network its config describes: {detail}.")


def check_finite(name: str, tensor: torch.Tensor, source: str) -> None:
    """Refuse NaN or infinite weights (they sample black images), naming the tensor."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise UserError(f"'{source}' holds NaN or infinite values in '{name}'; the weights are broken (pass "
                        "--allow-nonfinite to inspect them anyway).")


def read_tensors(path: str | os.PathLike, allow_nonfinite: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, after :func:`read_header` has checked the file; NaN/Inf refused."""
    path = Path(path)
    read_header(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"'{path}' could not be read as safetensors: {exc}.") from None
    if not allow_nonfinite:
        for name, tensor in tensors.items():
            check_finite(name, tensor, str(path))
    return tensors


def scan_finite(path: str | os.PathLike) -> None:
    """:func:`check_finite` for every tensor of a file, read one at a time (``loracli info``)."""
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():
            check_finite(name, f.get_tensor(name), str(path))


def state_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as independent, contiguous CPU tensors (safetensors refuses shared storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def save(model: Any, path: str | os.PathLike, step: int = 0, ema: bool = False,
         extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (a ConditionedModel) to ``path`` atomically; returns the path.

    ``step`` and ``ema`` say where in training the weights come from; ``extra`` is any JSON-able provenance
    (training data, run folder, source file of a conversion).
    """
    from loracli._version import __version__

    model = getattr(model, "module", model)  # unwrap DDP
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    if not hasattr(model, "config"):
        raise TypeError("loracli.save expects a network built by loracli (create_model, load or convert)")
    metadata = {
        "format": FORMAT,
        "loracli_version": __version__,
        "config": json.dumps(model.config, sort_keys=True),
        "step": str(int(step)),
        "ema": "true" if ema else "false",
        "extra": json.dumps(dict(extra or {}), sort_keys=True, default=str),
    }
    path = Path(path)
    tensors = state_tensors(model)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def describe_key_mismatch(missing: list[str], unexpected: list[str], limit: int = 6) -> str:
    """A readable summary of a strict-load mismatch."""
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} ({', '.join(missing[:limit])}{', ...' if len(missing) > limit else ''})")
    if unexpected:
        parts.append(
            f"unexpected {len(unexpected)} ({', '.join(unexpected[:limit])}{', ...' if len(unexpected) > limit else ''})"
        )
    return "; ".join(parts)


def load_state(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Load tensors strictly, or raise a UserError listing missing, unexpected, misshapen and mistyped keys
    (float weights may change precision; integer or boolean data never becomes a weight)."""
    own = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    found = {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}
    _refuse_mismatch(own, found, source, exact_dtype=False)
    model.load_state_dict(tensors, strict=True)


def inspect_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """``(metadata, header, meta-device network)`` of a checkpoint, after every check :func:`load` makes
    except reading the tensors: header, config, names, model, preset, and tensors that fit the network."""
    path = Path(path)
    header = read_header(path)
    info = read_metadata(path, header)
    skeleton = build_skeleton(info["config"], str(path))
    check_fits(skeleton, tensor_table(header), str(path))
    return info, header, skeleton


def load(path: str | os.PathLike, device: str | torch.device = "cpu", allow_nonfinite: bool = False) -> Any:
    """Rebuild the network stored in a loracli checkpoint; ``model.checkpoint`` holds its metadata.

    The file is checked before anything is built or read (:func:`inspect_checkpoint`); NaN or infinite
    weights are refused unless ``allow_nonfinite``.
    """
    from loracli.build import build_model

    path = Path(path)
    info, _, _ = inspect_checkpoint(path)
    tensors = read_tensors(path, allow_nonfinite)
    model = build_model(info["config"])
    load_state(model, tensors, str(path))
    model.checkpoint = {k: v for k, v in info.items() if k != "config"} | {"path": str(path)}
    return model.to(device).eval()
