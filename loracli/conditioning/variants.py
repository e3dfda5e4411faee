"""The built-in conditioning variants, registered through the ``loracli.conditions`` entry points."""

from __future__ import annotations

from typing import Any, Mapping

from loracli.registry import ConditionSpec


def _apply_none(model: Any, options: Mapping[str, Any]) -> None:
    """The baseline: the base network as it is."""


NONE = ConditionSpec(
    name="none",
    apply=_apply_none,
    description="no attention conditioning (the paper's baseline)",
)
