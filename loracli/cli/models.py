"""``loracli models``: what is registered, and from which distribution."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from loracli import registry
from loracli.cli.common import handle_errors


@handle_errors
def command() -> None:
    """List the registered base models (family, presets) and conditioning variants.

    Example:

      loracli models
    """
    out = Console()
    models = Table(title="Base models", title_justify="left")
    for col in ("name", "family", "presets", "provided by", "description"):
        models.add_column(col)
    for name, reg in sorted(registry.models().items()):
        spec = reg.spec
        presets = ", ".join(f"[bold]{p}[/]" if p == spec.default_preset else p for p in spec.presets)
        models.add_row(name, spec.family, presets, f"{reg.distribution} {reg.version}", spec.description)
    out.print(models)

    conds = Table(title="Conditioning variants (combine with +)", title_justify="left")
    for col in ("name", "families", "provided by", "description"):
        conds.add_column(col)
    for name, reg in sorted(registry.conditions().items()):
        spec = reg.spec
        conds.add_row(name, ", ".join(spec.families), f"{reg.distribution} {reg.version}", spec.description)
    out.print(conds)
