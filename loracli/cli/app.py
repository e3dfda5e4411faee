"""The Typer application, built in a factory so tests get a fresh app without reloading modules.

Importing this module costs nothing: typer, rich and the command modules are imported by ``make_app``, and
each command imports torch only when it runs, so ``loracli --help`` starts in a fraction of a second and a
Ctrl-C at any point of start-up ends in one line (``main``), not a traceback.
"""

import os
import sys
import warnings
from typing import Any

ROOT_HELP = """LoRA conditioning on the attention layers of diffusion U-Nets (Choi et al., TMLR 2024).

    Train, sample, score (FID) and convert diffusion models whose attention is conditioned by LoRA.

    Examples:

      loracli train nano --cond time-lora+class-lora

      loracli sample runs/nano-time-lora-class-lora/ckpt.safetensors --seeds 0-63 --class 3

      loracli fid samples/
    """


def make_app() -> Any:
    """A fresh ``loracli`` app with every subcommand registered."""
    from typing import Annotated

    import typer

    from loracli._version import __version__
    from loracli.cli import convert, export, fid, info, models, sample, train

    def root(
        debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
        version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
    ) -> None:
        if debug:
            os.environ["LORACLI_DEBUG"] = "1"
        if version:
            typer.echo(f"loracli {__version__}")
            raise typer.Exit()

    root.__doc__ = ROOT_HELP
    hide_flag_placeholders()
    app = typer.Typer(
        name="loracli",
        no_args_is_help=True,
        add_completion=False,
        rich_markup_mode="markdown",
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback(invoke_without_command=True)(root)
    app.command("train", no_args_is_help=True)(train.command)
    app.command("sample", no_args_is_help=True)(sample.command)
    app.command("fid", no_args_is_help=True)(fid.command)
    app.command("convert", no_args_is_help=True)(convert.command)
    app.command("export", no_args_is_help=True)(export.command)
    app.command("models")(models.command)
    app.command("info", no_args_is_help=True)(info.command)
    return app


def hide_flag_placeholders() -> None:
    """Help shows ``--resume`` rather than ``--resume <bool>``: an on/off flag takes no value.

    Typer's rich help prints a type placeholder for every option, flags included; this drops it for flags
    (once, for every command), and leaves Typer alone if its internals ever change shape.
    """
    from typer import core

    option = getattr(core, "TyperOption", None)
    show_type = getattr(option, "display_type_rich", None)
    if show_type is None or getattr(show_type, "hides_flags", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> Any:
        return None if getattr(self, "is_flag", False) and self.metavar is None else show_type(self, ctx)

    display_type_rich.hides_flags = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Warnings as one yellow line (a skipped plugin, say); ``--debug`` keeps Python's own format."""
    from loracli.cli.common import console, debug_enabled

    if debug_enabled():
        warnings._showwarning_orig(message, category, filename, lineno, file, line)  # type: ignore[attr-defined]
    else:
        console.print(f"[yellow]Warning:[/] {message}", highlight=False)


def main() -> None:
    """Console-script entry point; Ctrl-C before a command runs (while Python imports) is one line too."""
    try:
        warnings.showwarning = _show_warning
        make_app()(prog_name="loracli")
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        sys.exit(130)
