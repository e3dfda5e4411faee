"""Training: recipes (``recipe.py``), the loop (``loop.py``), EMA, run state and resume, several processes.

``start_run`` is what ``loracli train`` calls: it resolves the recipe (or reads the state of the run to
resume), picks the run folder, prints the settings and trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from rich.console import Console

from loracli.errors import UserError
from loracli.train.loop import RunResult, Trainer, TrainingDiverged
from loracli.train.recipe import DEFAULTS, load_recipe, merge, resolve_duration
from loracli.train.state import STATE_FILE, default_run_dir, read_state

__all__ = ["start_run", "Trainer", "RunResult", "TrainingDiverged", "RESUME_CHANGEABLE"]

# What may differ when a run is resumed: its length and how it runs, not what it computes.
RESUME_CHANGEABLE = frozenset({"train.steps", "train.kimg", "train.snapshot_every", "train.log_every",
                               "train.workers", "train.device", "train.compile", "train.precision",
                               "train.batch_gpu", "train.log", "sample.images", "sample.fit_to_run"})


def changed(overrides: Mapping[str, Any], saved: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted names of the settings ``overrides`` gives a new value (None means not given)."""
    names = []
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            names += changed(value, saved.get(key) or {}, f"{prefix}{key}.")
        elif value is not None and value != saved.get(key):
            names.append(f"{prefix}{key}")
    return names


def resumed_recipe(run_dir: Path, model: str, overrides: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """The saved recipe of ``run_dir`` with the few settings that may change; and the state itself."""
    state = read_state(run_dir / STATE_FILE)
    fixed = [name for name in changed(overrides, state.recipe) if name not in RESUME_CHANGEABLE]
    if fixed:
        raise UserError(f"--resume continues a run with its own settings; {', '.join(fixed)} cannot change "
                        "(only the length and how it runs can; start a new run with --init to change the rest).")
    if state.recipe["model"] != model:
        raise UserError(f"The run in '{run_dir}' trains '{state.recipe['model']}', not '{model}'.")
    saved = merge(DEFAULTS, state.recipe)  # a run saved by an older loracli lacks the settings added since
    return resolve_duration(with_length(merge(saved, overrides), overrides)), state


def with_length(recipe: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``--kimg`` wins over a length in steps or a drop-in length the recipe (or the resumed run) holds."""
    if overrides.get("train", {}).get("kimg") is not None:
        recipe["train"]["steps"] = recipe["train"]["init_kimg"] = None
    return recipe


def start_run(model: str, preset: str | None, config_file: Path | None, overrides: dict[str, Any],
              outdir: Path | None, resume: bool, console: Console, show: bool = True,
              threads: int | None = None) -> RunResult:
    """Train as ``loracli train`` describes; ``show``: this process prints (rank 0 of a torchrun job);
    ``threads``: torch's CPU threads (None: ``runtime.set_threads``'s default)."""
    from loracli.build import parse_cond
    from loracli.folders import check_output_folder
    from loracli.runtime import set_threads
    from loracli.train.report import config_table, shown_settings

    state = None
    if resume:
        if config_file is not None:
            raise UserError("--resume takes its settings from the run folder; leave out --config.")
        run_dir = outdir or default_run_dir(model, overrides.get("cond") or "none", existing=True)
        recipe, state = resumed_recipe(run_dir, model, overrides)
    else:
        if overrides.get("init"):  # the recipe of the checkpoint's preset, unless --preset names another
            from loracli.train.setup import init_config

            preset = preset or init_config(overrides["init"], model).get("preset")
        recipe = resolve_duration(with_length(load_recipe(model, preset, config_file, overrides), overrides))
        parse_cond(recipe["cond"])  # a malformed --cond ('time-lora+') is refused before the folder is named
        run_dir = outdir or default_run_dir(model, recipe["cond"])
        check_output_folder(run_dir)
        if (run_dir / STATE_FILE).exists():
            raise UserError(f"'{run_dir}' already holds a run; continue it with --resume or pick another --outdir.")
    used = set_threads(threads)
    trainer = Trainer(recipe, run_dir, state=state, console=console)  # checks data and network first
    if show:
        title = f"loracli train: {'resuming' if resume else 'new run'} in {run_dir}"
        console.print(config_table(shown_settings(recipe, trainer.grid_images, used), title))
    try:
        return trainer.run()
    finally:
        trainer.close()
