"""loracli's own checkpoints as a conversion source (to re-wrap with other conditioning)."""

from __future__ import annotations

from pathlib import Path

from loracli.io.convert.base import ForeignCheckpoint


def detect(path: Path) -> bool:
    """A safetensors file (a little-endian header length, then a JSON object); ``read`` checks the rest."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def read(path: Path) -> ForeignCheckpoint:
    """The checkpoint's network; ``convert_model`` checks the weights for NaN/Inf as for every format."""
    from loracli.io.checkpoint import inspect_checkpoint, read_tensors

    info, _, _ = inspect_checkpoint(path)  # every check loracli.load makes, before any tensor is read
    config = info["config"]
    return ForeignCheckpoint(
        model=config["model"], model_config=config["model_config"], state_dict=read_tensors(path, allow_nonfinite=True),
        preset=config.get("preset"), cond=list(config["cond"]), cond_options=config["cond_options"],
        only_lora=config.get("only_lora", False), source={"file": Path(path).name, "format": "loracli"},
        ema=info["ema"],
    )
