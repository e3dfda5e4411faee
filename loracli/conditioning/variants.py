"""The built-in conditioning variants, registered through the ``loracli.conditions`` entry points.

Each LoRA variant adds one branch to the qkv and output projection of every attention block (see
``lora.py``); they differ only in where the basis weights ω come from (``composers.py``). Variants combine
with ``+`` (e.g. ``time-lora+class-lora``): their branches add up on the same projections.

The specs are the ``loracli.conditions`` entry points, so this module imports no torch: the ``apply`` functions
import the LoRA modules when a variant is first applied (listing variants stays fast).
"""

from __future__ import annotations

from typing import Any, Mapping

from loracli.errors import UserError
from loracli.registry import ConditionSpec


def _positive_int(options: Mapping[str, Any], key: str) -> int:
    value = options[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"Option '{key}' must be a positive integer; got {value!r}.")
    return value


def _mlp_widths(value: Any) -> list[int]:
    """``[128, 64]`` or ``"128,64"`` -> hidden widths, each splitting into ``min(32, w // 4)`` GroupNorm groups."""
    try:
        widths = [int(w) for w in (value.split(",") if isinstance(value, str) else value)]
    except (TypeError, ValueError):
        raise UserError(f"Option 'mlp' must list hidden widths like 128,64; got {value!r}.") from None
    for w in widths:
        if w < 4 or w % min(32, w // 4):
            raise UserError(f"MLP width {w} does not split into min(32, {w}//4) GroupNorm groups; use e.g. 128 or 64.")
    if not widths:
        raise UserError("Option 'mlp' needs at least one hidden width, e.g. 128,64.")
    return widths


def diffusion_steps(model: Any) -> int:
    """T of a ddpm-family network: its config's ``diffusion_steps``, else the built network's attribute."""
    steps = model.config["model_config"].get("diffusion_steps", getattr(model.net, "diffusion_steps", None))
    if steps is None:
        raise UserError(f"time-lora needs the number of diffusion steps, which model '{model.spec.name}' does not state.")
    return int(steps)


def _apply_none(model: Any, options: Mapping[str, Any]) -> None:
    """The baseline: the base network as it is."""


def _apply_time_lora(model: Any, options: Mapping[str, Any]) -> None:
    from loracli.conditioning.composers import OMEGA_INITS, TimeTable
    from loracli.conditioning.inject import add_lora
    from loracli.conditioning.lora import LoRABranch

    rank, bases = _positive_int(options, "lora_rank"), _positive_int(options, "bases")
    init = options["omega_init"]
    if init not in OMEGA_INITS:
        raise UserError(f"Option 'omega_init' must be one of {', '.join(OMEGA_INITS)}; got {init!r}.")
    steps = diffusion_steps(model)
    add_lora(model, "time-lora",
             lambda d_in, d_out: LoRABranch(d_in, d_out, rank, bases, TimeTable(steps, bases, init)))


def _apply_class_lora(model: Any, options: Mapping[str, Any]) -> None:
    from loracli.conditioning.composers import ClassVector
    from loracli.conditioning.inject import add_lora
    from loracli.conditioning.lora import LoRABranch

    rank, classes = _positive_int(options, "lora_rank"), model.label_dim
    add_lora(model, "class-lora", lambda d_in, d_out: LoRABranch(d_in, d_out, rank, classes, ClassVector()))


def _apply_uc_lora(model: Any, options: Mapping[str, Any]) -> None:
    from loracli.conditioning.composers import EmbeddingMLP
    from loracli.conditioning.inject import add_lora
    from loracli.conditioning.lora import LoRABranch

    rank, bases = _positive_int(options, "lora_rank"), _positive_int(options, "bases")
    widths = _mlp_widths(options["mlp"])
    model.use_embedding()
    channels = model.embedding_channels()
    add_lora(model, "uc-lora", lambda d_in, d_out: LoRABranch(
        d_in, d_out, rank, bases, EmbeddingMLP(channels, widths, bases), bias=True))


NONE = ConditionSpec(
    name="none",
    apply=_apply_none,
    description="no attention conditioning (the paper's baseline)",
)

TIME_LORA = ConditionSpec(
    name="time-lora",
    apply=_apply_time_lora,
    defaults={"lora_rank": 4, "bases": 11, "omega_init": "linear"},
    families=("ddpm",),
    needs=("timesteps",),
    description="TimeLoRA: per-layer learnable (T+1)×m table of basis weights over timesteps, hat-function init",
)

CLASS_LORA = ConditionSpec(
    name="class-lora",
    apply=_apply_class_lora,
    defaults={"lora_rank": 4},
    families=("edm", "ddpm"),
    needs=("labels",),
    description="ClassLoRA: one rank-r adapter per class, weighted by the (one-hot or soft) class vector",
)

UC_LORA = ConditionSpec(
    name="uc-lora",
    apply=_apply_uc_lora,
    defaults={"lora_rank": 4, "bases": 18, "mlp": [128, 64]},
    families=("edm", "ddpm"),
    needs=("embedding",),
    description="UC-LoRA: per-layer MLP from the network's conditioning embedding to basis weights, plus ω-weighted bias",
)
