"""Training recipes: TOML presets (``loracli/configs/<model>-<preset>.toml``), a user's TOML, then CLI flags.

A recipe is chosen by model and preset (``loracli train edm --preset cifar10`` reads ``edm-cifar10.toml``).
Class conditioning and the conditioning variant sit on top (``--label-dim 10``, ``--cond uc-lora``): the
paper's conditional and unconditional rows share one recipe, as in the reference code. Every layer may set
any key of :data:`DEFAULTS`; later layers win key by key. The result is plain JSON-able data: it is printed,
saved in the run folder and stored in every checkpoint (``extra["train"]``).
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path
from typing import Any, Mapping

from loracli.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

# Every setting a recipe may hold, with the value used when no layer sets it.
DEFAULTS: dict[str, Any] = {
    "description": "",
    "reference": "",
    "model": None,
    "preset": None,
    "cond": "none",
    "only_lora": False,
    "label_dim": None,     # None: 0, or the data's classes when a conditioning needs labels
    "data": None,          # None: the built-in data set
    "init": None,          # a loracli checkpoint to start from (the paper's drop-in recipe)
    "finetune": False,     # train only the adapters
    "network": {},         # builder settings on top of the model preset (e.g. dropout)
    "cond_options": {},    # conditioning options (lora_rank, bases, mlp, omega_init)
    "train": {
        "loss": "auto",            # edm | vp | ve (edm family), ddpm (IDDPM's loss); auto: by family/precond
        "batch": 64,               # global batch
        "kimg": None,              # duration in thousands of images (or steps)
        "steps": None,
        "init_kimg": None,         # duration when starting from --init, if it differs
        "lr": 1e-4,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "lr_rampup_kimg": 0.0,     # linear warm-up from 0
        "ema_halflife_kimg": None,  # EDM's EMA (with ema_rampup_ratio), or
        "ema_rampup_ratio": None,
        "ema_rate": None,          # IDDPM's fixed-rate EMA
        "xflip": False,            # EDM's dataset x-flip (doubles the data set)
        "snapshot_kimg": None,     # checkpoint interval (or snapshot_every, in steps)
        "snapshot_every": None,
        "log_every": 10,           # steps between progress/metrics updates
        "seed": 0,
        "batch_gpu": None,         # micro-batch per process (gradient accumulation); None: no limit
        "workers": None,           # DataLoader processes; None: 0 on the CPU, up to 8 per GPU
        "precision": None,         # bf16 | fp32; None: bf16 on CUDA, fp32 on the CPU
        "compile": False,
        "device": "auto",
        "log": None,               # also log to: tensorboard
    },
    "augment": {},         # AugmentPipe settings (EDM family); empty or p = 0: off
    # The grid at each snapshot: at most `images`; fit_to_run: fewer for a short run (see report.grid_size).
    "sample": {"images": 64, "fit_to_run": True, "sampler": None, "steps": None},
}

LOGGERS = ("tensorboard",)


def _number(low: float, high: float = math.inf, low_open: bool = False, integer: bool = False,
            optional: bool = True) -> tuple[Any, str]:
    """A test for one numeric setting, and the words that say what it must be."""
    kind = "a whole number" if integer else "a number"
    words = (f"{kind} greater than {low}" if low_open else f"{kind} of at least {low}" if high == math.inf
             else f"{kind} from {low} to {high}")

    def test(value: Any) -> bool:
        if value is None:
            return optional
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return (value > low if low_open else value >= low) and value <= high

    return test, words


# The numeric settings a recipe holds and their ranges: refused with a sentence, whatever layer gave them.
RANGES: dict[str, Any] = {
    "label_dim": _number(0, integer=True),
    "train.batch": _number(1, integer=True, optional=False),
    "train.batch_gpu": _number(1, integer=True),
    "train.steps": _number(1, integer=True),
    "train.kimg": _number(0, low_open=True),
    "train.init_kimg": _number(0, low_open=True),
    "train.lr": _number(0, low_open=True, optional=False),
    "train.lr_rampup_kimg": _number(0),
    "train.ema_halflife_kimg": _number(0, low_open=True),
    "train.ema_rampup_ratio": _number(0, low_open=True),
    "train.ema_rate": _number(0, 1),
    "train.snapshot_kimg": _number(0, low_open=True),
    "train.snapshot_every": _number(1, integer=True),
    "train.log_every": _number(1, integer=True, optional=False),
    "train.seed": _number(0, 2**63 - 1, integer=True, optional=False),
    "train.workers": _number(0, integer=True),
    "network.dropout": _number(0, 1),
    "augment.p": _number(0, 1),
    "sample.images": _number(0, integer=True, optional=False),
    "sample.steps": _number(1, integer=True),
}


def check_values(recipe: Mapping[str, Any]) -> None:
    """Refuse a setting out of its range (a negative learning rate, a dropout above 1) before anything runs."""
    for name, (test, words) in RANGES.items():
        table, _, key = name.rpartition(".")
        holder = recipe.get(table) or {} if table else recipe
        if key in holder and not test(holder[key]):
            raise UserError(f"'{name}' must be {words}; got {holder[key]!r}.")
    log = recipe["train"].get("log")
    if log is not None and log not in LOGGERS:
        raise UserError(f"Unknown log '{log}'; the logs are: {', '.join(LOGGERS)} (metrics.jsonl is always written).")


def recipe_path(model: str, preset: str) -> Path:
    return CONFIG_DIR / f"{model}-{preset}.toml"


def available_recipes() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"No config file at '{path}'; pass a TOML file (see docs/training.md).")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"'{path}' is not valid TOML ({exc}).") from None
    check_keys(data, DEFAULTS, str(path))
    return data


def check_keys(layer: Mapping[str, Any], schema: Mapping[str, Any], where: str, prefix: str = "") -> None:
    """Refuse keys a recipe cannot hold (typos would otherwise be silently ignored)."""
    free = ("network", "cond_options", "augment")  # checked by the model builder, variant or AugmentPipe
    for key, value in layer.items():
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise UserError(f"'{where}' sets unknown setting '{prefix}{key}'; known: {known}.")
        if isinstance(schema[key], dict) and key not in free:
            if not isinstance(value, Mapping):
                raise UserError(f"'{where}': '{prefix}{key}' must be a table.")
            check_keys(value, schema[key], where, f"{prefix}{key}.")


def merge(base: dict[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    """``layer`` over ``base``, tables merged key by key (None in a layer means 'not set')."""
    out = copy.deepcopy(base)
    for key, value in layer.items():
        if value is None:
            continue
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_recipe(model: str, preset: str | None, config_file: str | Path | None = None,
                overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The merged recipe: defaults, ``<model>-<preset>.toml``, the user's TOML, then ``overrides`` (CLI flags).

    ``preset`` (the CLI flag) wins over the user's TOML, which wins over the model's default preset.
    """
    from loracli import registry

    spec = registry.get_model(model)
    user = read_toml(config_file) if config_file else {}
    preset = preset or user.get("preset") or spec.default_preset
    if preset not in spec.presets:
        raise UserError(f"Model '{model}' has no preset '{preset}'; presets: {', '.join(spec.presets)}.")
    path = Path(spec.presets[preset].recipe) if spec.presets[preset].recipe else recipe_path(model, preset)
    if path.is_file():
        recipe = merge(DEFAULTS, read_toml(path))
    elif config_file:
        recipe = copy.deepcopy(DEFAULTS)
    else:
        raise UserError(f"There is no training recipe for {model} preset '{preset}' (recipes: "
                        f"{', '.join(available_recipes())}); pass --config FILE.toml with its settings.")
    recipe = merge(recipe, user)
    recipe = merge(recipe, overrides or {})
    for key, value in (("model", model), ("preset", preset)):
        if recipe.get(key) not in (None, value):
            raise UserError(f"The config file is a recipe for {key} '{recipe[key]}', not '{value}'.")
        recipe[key] = value
    return recipe


def resolve_duration(recipe: dict[str, Any]) -> dict[str, Any]:
    """Fix the run length and snapshot interval in optimiser steps (the loop counts steps)."""
    check_values(recipe)
    train = recipe["train"]
    batch = int(train["batch"])

    def steps_for(kimg: float) -> int:
        return max(1, math.ceil(float(kimg) * 1000 / batch))

    if train["steps"] is None:
        kimg = train["init_kimg"] if recipe["init"] and train["init_kimg"] is not None else train["kimg"]
        if kimg is None:
            raise UserError("The recipe sets no training length; pass --steps or --kimg.")
        train["steps"] = steps_for(kimg)
    if train["snapshot_every"] is None:
        train["snapshot_every"] = (steps_for(train["snapshot_kimg"]) if train["snapshot_kimg"] is not None
                                   else train["steps"])
    for key in ("steps", "snapshot_every", "log_every"):
        if int(train[key]) < 1:
            raise UserError(f"'{key}' must be at least 1; got {train[key]}.")
        train[key] = int(train[key])
    return recipe
