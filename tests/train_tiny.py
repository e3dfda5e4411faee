"""A tiny training recipe for the tests: nano at 16x16 with 8 channels on the built-in data, a few steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loracli.train.recipe import load_recipe, merge, resolve_duration

TINY_NETWORK = {"img_resolution": 16, "model_channels": 8, "channel_mult": [1, 2], "attn_resolutions": [8],
                "channels_per_head": 8}
TINY_LAYER = {"network": TINY_NETWORK, "train": {"batch": 8, "lr_rampup_kimg": 0, "log_every": 1},
              "sample": {"images": 4, "steps": 2}}


def tiny_recipe(cond: str = "time-lora", **layer: Any) -> dict[str, Any]:
    """The nano recipe shrunk to seconds (4 steps), with ``layer`` (nested dicts) merged on top."""
    base = merge(TINY_LAYER, {"cond": cond, "train": {"steps": 4}})
    return resolve_duration(load_recipe("nano", None, None, merge(base, layer)))


def write_tiny_toml(folder: Path) -> Path:
    """TINY_LAYER as a --config file."""
    lines = []
    for table, values in TINY_LAYER.items():
        lines += [f"[{table}]"] + [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path = folder / "tiny.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def ddp_worker(rank: int, world: int, port: int, run_dir: str, layer: dict) -> None:
    """One process of a torchrun-like job (gloo on the CPU): train the tiny recipe; rank 0 writes the state."""
    import os

    import torch

    from loracli.train.loop import Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    trainer = Trainer(tiny_recipe(**layer), Path(run_dir))
    try:
        trainer.run()
    finally:
        trainer.close()
