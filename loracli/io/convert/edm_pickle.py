"""NVlabs/edm network pickles: ``network-snapshot-*.pkl`` (the ``ema`` network) and ``training-state-*.pt``
(the ``net`` being trained), read without the EDM source and without running the code they embed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loracli.errors import UserError
from loracli.io.convert.base import ForeignCheckpoint, file_sha256
from loracli.io.convert.unpickle import ZIP_MAGIC, PersistentRecord, load_file, state_dict, walk

FORMAT = "edm-pickle"
_PERSISTENCE = b"torch_utils.persistence"
_LEGACY_TORCH = b"\x80\x02\x8a\x0a"  # a legacy torch.save file opens with a pickled 10-byte magic number
_DEFAULT_KEYS = ("ema", "net")  # network-snapshot, training-state


def detect(path: Path) -> bool:
    """A plain pickle (protocol 2-5, not a legacy torch.save file), or a torch archive of EDM objects.

    torch stores its archive's pickle first and uncompressed, so EDM's persistence marker shows in the
    first bytes even of a truncated ``training-state-*.pt``.
    """
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    if head.startswith(ZIP_MAGIC):
        return _PERSISTENCE in head
    return len(head) >= 4 and head[0] == 0x80 and 2 <= head[1] <= 5 and not head.startswith(_LEGACY_TORCH)


def _is_network(obj: Any) -> bool:
    """A recorded preconditioner: a persistent object holding a persistent U-Net as ``model``."""
    return (isinstance(obj, PersistentRecord)
            and isinstance((obj.state.get("_modules") or {}).get("model"), PersistentRecord))


def _select(obj: Any, key: str | None, path: Path) -> tuple[PersistentRecord, str | None]:
    """The network record under ``key`` (default: ``ema``, else ``net``), or a UserError saying what is there."""
    if key is None and _is_network(obj):
        return obj, None
    if not isinstance(obj, dict):
        raise UserError(f"'{path}' does not hold an NVlabs/edm network snapshot (it holds a {type(obj).__name__}).")
    keys = ", ".join(map(str, obj)) or "none"
    if key is None:
        key = next((k for k in _DEFAULT_KEYS if k in obj), None)
        if key is None:
            raise UserError(f"'{path}' has no 'ema' or 'net' entry; choose one of its keys ({keys}) with --key.")
    elif key not in obj:
        raise UserError(f"'{path}' has no key '{key}'; its keys are {keys}.")
    if not _is_network(obj[key]):
        raise UserError(f"'{path}' holds no NVlabs/edm network under '{key}'; its keys are {keys}.")
    return obj[key], key


def _summary(obj: Any) -> Any:
    """Provenance of the snapshot's other entries (loss, augmentation, data set) as plain data."""
    from loracli.models.edm.config import plain

    def scalars(entries: dict[str, Any]) -> dict[str, Any]:
        return {str(k): v for k, v in plain(entries).items()
                if not str(k).startswith("_") and isinstance(v, (str, int, float, bool, type(None)))}

    if isinstance(obj, PersistentRecord):
        return {"class": obj.class_name, **scalars(obj.state)}
    return scalars(obj) if isinstance(obj, dict) else None


def read(path: Path, key: str | None = None) -> ForeignCheckpoint:
    """The network in an NVlabs/edm pickle as loracli's ``edm`` model; ``key`` picks the snapshot entry."""
    from loracli.models.edm.config import from_reference
    from loracli.models.edm.presets import match_preset

    path = Path(path)
    obj = load_file(path)
    net, key = _select(obj, key, path)
    model = net.state["_modules"]["model"]
    config = from_reference(net.class_name, net.state.get("_init_args") or (),
                            net.state.get("_init_kwargs") or {}, model.class_name)
    source: dict[str, Any] = {
        "file": path.name,
        "format": FORMAT,
        "sha256": file_sha256(path),
        "key": key,
        "classes": [net.class_name, model.class_name],
        "module_src_sha256": sorted({r.source_sha256 for r in walk(net) if isinstance(r, PersistentRecord)}),
    }
    if isinstance(obj, dict):
        source.update({k: _summary(obj[k]) for k in ("loss_fn", "augment_pipe", "dataset_kwargs") if k in obj})
    tensors = state_dict(net, prefix="net.")  # the keys of the ConditionedModel that holds the network
    return ForeignCheckpoint(model="edm", model_config=config, state_dict=tensors,
                             preset=match_preset(config), source=source, ema=key == "ema")
