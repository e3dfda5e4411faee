"""What every subcommand shares: the console, error handling, and parsers for seeds and classes."""

from __future__ import annotations

import functools
import math
import os
import traceback
from typing import Any, Callable, TypeVar

import typer
from rich.console import Console

from loracli.errors import UserError

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


class NotImplementedYet(UserError):
    """A subcommand whose argument surface exists but whose work is not built yet."""


def debug_enabled() -> bool:
    return os.environ.get("LORACLI_DEBUG", "") not in ("", "0")


def handle_errors(fn: F) -> F:
    """Turn a UserError into one red sentence and exit code 2 (with the traceback under --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            if debug_enabled():
                traceback.print_exc()
            console.print(f"[bold red]Error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]Interrupted.[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def positive(value: float | None) -> float | None:
    """Typer callback for a number that must be above 0 (a learning rate, a length in kimg); ranges closed at
    both ends use Typer's own ``min``/``max``."""
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise typer.BadParameter(f"must be a number greater than 0, not {value}.")
    return value


def not_implemented(command: str, issue: str) -> None:
    raise NotImplementedYet(f"`loracli {command}` is not implemented yet ({issue}).")


def is_rank_zero() -> bool:
    """Only rank 0 of a torchrun job prints progress and writes files."""
    return int(os.environ.get("RANK", "0")) == 0

