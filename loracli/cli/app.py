"""The Typer application, built in a factory so tests get a fresh app without reloading modules."""

from __future__ import annotations

import os
import warnings
from typing import Annotated, Any

import typer

from loracli import __version__


def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """LoRA conditioning on the attention layers of diffusion U-Nets (Choi et al., TMLR 2024).

    Train, sample, score (FID) and convert diffusion models whose attention is conditioned by LoRA.

    Examples:

      loracli train nano --cond time-lora

      loracli sample runs/nano/ckpt.safetensors --seeds 0-63

      loracli fid samples/
    """
    if debug:
        os.environ["LORACLI_DEBUG"] = "1"
    if version:
        typer.echo(f"loracli {__version__}")
        raise typer.Exit()


def make_app() -> typer.Typer:
    """A fresh ``loracli`` app with every subcommand registered."""
    from loracli.cli import convert, export, fid, info, models, sample, train

    app = typer.Typer(
        name="loracli",
        no_args_is_help=True,
        add_completion=False,
        rich_markup_mode="markdown",
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback(invoke_without_command=True)(_root)
    app.command("train", no_args_is_help=True)(train.command)
    app.command("sample", no_args_is_help=True)(sample.command)
    app.command("fid", no_args_is_help=True)(fid.command)
    app.command("convert", no_args_is_help=True)(convert.command)
    app.command("export", no_args_is_help=True)(export.command)
    app.command("models")(models.command)
    app.command("info", no_args_is_help=True)(info.command)
    return app


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Warnings as one yellow line (a skipped plugin, say); ``--debug`` keeps Python's own format."""
    from loracli.cli.common import console, debug_enabled

    if debug_enabled():
        warnings._showwarning_orig(message, category, filename, lineno, file, line)  # type: ignore[attr-defined]
    else:
        console.print(f"[yellow]Warning:[/] {message}", highlight=False)


def main() -> None:
    """Console-script entry point."""
    warnings.showwarning = _show_warning
    make_app()(prog_name="loracli")
