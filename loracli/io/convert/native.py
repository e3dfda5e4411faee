"""loracli's own checkpoints as a conversion source (to re-wrap with other conditioning)."""

from __future__ import annotations

from pathlib import Path

from loracli.io.convert.base import ForeignCheckpoint


def detect(path: Path) -> bool:
    from loracli.errors import UserError
    from loracli.io.checkpoint import read_metadata

    try:
        read_metadata(path)
    except UserError:
        return False
    return True


def read(path: Path) -> ForeignCheckpoint:
    from safetensors.torch import load_file

    from loracli.io.checkpoint import read_metadata

    info = read_metadata(path)
    config = info["config"]
    return ForeignCheckpoint(
        model=config["model"], model_config=config["model_config"], state_dict=load_file(str(path)),
        preset=config.get("preset"), cond=list(config["cond"]), cond_options=config["cond_options"],
        only_lora=config.get("only_lora", False), source={"file": Path(path).name, "format": "loracli"},
        ema=info["ema"],
    )
