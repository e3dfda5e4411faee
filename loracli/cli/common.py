"""What every subcommand shares: the console, error handling, and parsers for seeds and classes."""

from __future__ import annotations

import functools
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


def not_implemented(command: str, issue: str) -> None:
    raise NotImplementedYet(f"`loracli {command}` is not implemented yet ({issue}).")


def is_rank_zero() -> bool:
    """Only rank 0 of a torchrun job prints progress and writes files."""
    return int(os.environ.get("RANK", "0")) == 0


def check_output_folder(path: os.PathLike[str] | str, flag: str = "--outdir") -> None:
    """Refuse, before any work and without creating anything, an output folder that is a file or that cannot be
    made (a file in its path, or no permission to write where it would go)."""
    from pathlib import Path

    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} '{folder}' is a file, not a folder; pick another path.")
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{flag} '{folder}' cannot be created because '{existing}' is a file; pick another path.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} '{folder}' cannot be written: no permission to write in '{existing}'.")
