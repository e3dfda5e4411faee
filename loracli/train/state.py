"""The run folder and the training state that ``--resume`` continues from, bit for bit.

``state.safetensors`` holds the raw weights (``model.*``), the EMA weights (``ema.*``) and the optimiser's
tensors (``optim.<param>.<name>``); its JSON metadata holds the step, the network's build config, the
resolved recipe and the optimiser's scalar settings. No pickles: it is read with safetensors alone. Random
numbers are a pure function of (seed, step, rank) (see ``loop.py``) and the data order of (seed, position)
(``loracli.data.order``), so the step number is the whole random state. Every write is atomic.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file

from loracli.errors import UserError
from loracli.io.atomic import atomic_path, remove_stale_temps
from loracli.io.checkpoint import (build_skeleton, check_config_types, check_fits, read_header, read_tensors,
                                   state_tensors, tensor_table)
from loracli.io.checkpoint import load_state as load_module_state

STATE_FILE = "state.safetensors"
CHECKPOINT_FILE = "ckpt.safetensors"
FORMAT = "loracli-train-state"
# Optimiser settings that describe how it runs on this machine, not what it has learnt.
_IMPLEMENTATION_KEYS = ("foreach", "fused", "capturable", "differentiable", "maximize")


def snapshot_name(step: int) -> str:
    return f"snapshot-{step:07d}.safetensors"


def grid_name(step: int) -> str:
    return f"grid-{step:07d}.png"


def default_run_dir(model: str, cond: str, root: Path = Path("runs"), existing: bool = False) -> Path:
    """``runs/<model>-<cond>``, numbered ``-1``, ``-2``, ... if taken; ``existing``: the newest one with a state."""
    stem = f"{model}-{cond.replace('+', '-')}"
    candidates = [root / stem] + [root / f"{stem}-{k}" for k in range(1, 1000)]
    if existing:
        found = [c for c in candidates if (c / STATE_FILE).is_file()]
        if not found:
            raise UserError(f"No run to resume under '{root / stem}*'; pass --outdir RUN_FOLDER.")
        return found[-1]
    return next(c for c in candidates if not c.exists())


def save_state(path: Path, model: Any, ema_model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
               recipe: Mapping[str, Any]) -> None:
    """Write everything needed to continue training at ``step`` (atomically)."""
    model = getattr(model, "module", model)
    tensors = {f"model.{k}": v for k, v in state_tensors(model).items()}
    tensors.update({f"ema.{k}": v for k, v in state_tensors(ema_model).items()})
    optim = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in optim["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{name}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(index), {})[name] = value
    metadata = {
        "format": FORMAT,
        "step": str(int(step)),
        "model_config": json.dumps(model.config, sort_keys=True),
        "recipe": json.dumps(recipe, sort_keys=True),
        "param_groups": json.dumps(optim["param_groups"]),
        "optim_scalars": json.dumps(scalars),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


@dataclass
class RunState:
    """A training state read back: apply it with :meth:`restore`."""

    path: Path
    step: int
    model_config: dict
    recipe: dict
    tensors: dict[str, torch.Tensor]
    param_groups: list
    optim_scalars: dict

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def restore(self, model: torch.nn.Module, ema_model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        load_module_state(model, self.section("model."), str(self.path))
        load_module_state(ema_model, self.section("ema."), str(self.path))
        params = [p for group in optimizer.param_groups for p in group["params"]]
        state: dict[int, dict[str, Any]] = {}
        try:
            for key, value in self.section("optim.").items():
                index, name = key.split(".", 1)
                if not 0 <= int(index) < len(params) or (value.dim() and value.shape != params[int(index)].shape):
                    raise ValueError(f"optimiser tensor {key} fits no trained parameter")
                state.setdefault(int(index), {})[name] = value
            for index, entries in self.optim_scalars.items():
                state.setdefault(int(index), {}).update(entries)
        except (ValueError, TypeError, AttributeError) as exc:
            raise UserError(f"'{self.path}' is not a readable loracli training state ({exc}); it may be "
                            "damaged.") from None
        current = optimizer.state_dict()["param_groups"]
        if len(current) != len(self.param_groups):
            raise UserError(f"'{self.path}' was saved with another set of trained parameters; start a new run.")
        groups = [{**saved, **{k: now[k] for k in _IMPLEMENTATION_KEYS if k in now}}
                  for saved, now in zip(self.param_groups, current)]
        optimizer.load_state_dict({"state": state, "param_groups": groups})


def read_state(path: Path, allow_nonfinite: bool = False) -> RunState:
    """Read ``state.safetensors`` (safetensors only; nothing from the file is executed).

    The header and the build config are checked and the weights compared with the network on the meta device
    before any tensor is read; NaN or infinite values are refused unless ``allow_nonfinite``. Temporary files
    that killed writes left in the run folder are removed.
    """
    if not path.is_file():
        raise UserError(f"No training state at '{path}'; resume needs a run folder written by `loracli train`.")
    remove_stale_temps(path.parent)
    header = read_header(path)
    meta = header.get("__metadata__") or {}
    try:
        if meta.get("format") != FORMAT:
            raise ValueError("not a loracli training state")
        state = RunState(path, int(meta["step"]), json.loads(meta["model_config"]), json.loads(meta["recipe"]),
                         {}, json.loads(meta["param_groups"]), json.loads(meta["optim_scalars"]))
        if not (isinstance(state.recipe, dict) and isinstance(state.param_groups, list)
                and isinstance(state.optim_scalars, dict)):
            raise ValueError("malformed metadata")
        check_config_types(state.model_config)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise UserError(f"'{path}' is not a readable loracli training state ({exc}); it may be damaged.") from None
    skeleton = build_skeleton(state.model_config, str(path))
    table = tensor_table(header)
    for section in ("model.", "ema."):
        check_fits(skeleton, {k[len(section):]: v for k, v in table.items() if k.startswith(section)}, str(path))
    state.tensors = read_tensors(path, allow_nonfinite)
    return state


def publish(snapshot: Path, target: Path) -> None:
    """Make ``target`` (``ckpt.safetensors``) the newest snapshot: a hard link, or a copy where links fail."""
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(snapshot, tmp)
        except OSError:
            shutil.copyfile(snapshot, tmp)
