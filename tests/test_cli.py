"""The command line: help for every command, the models table, and one-sentence errors."""

from __future__ import annotations

import pytest

COMMANDS = ["train", "sample", "fid", "convert", "export", "models", "info"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(cli, command):
    result = cli(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output and f"loracli {command}" in result.output


def test_root_help_lists_every_command(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


def test_version(cli):
    import loracli

    result = cli("--version")
    assert result.exit_code == 0 and loracli.__version__ in result.output


def test_models_lists_models_and_conditions_with_their_distribution(cli):
    result = cli("models")
    assert result.exit_code == 0
    for word in ("nano", "ddpm", "none", "loracli"):
        assert word in result.output


def test_user_errors_are_one_sentence_and_exit_code_2(tmp_path):
    import typer
    from typer.testing import CliRunner

    from loracli.cli.common import handle_errors
    from loracli.errors import UserError

    app = typer.Typer()

    @app.command()
    @handle_errors
    def boom() -> None:
        raise UserError("The thing is wrong; do the other thing.")

    result = CliRunner().invoke(app, [])
    assert result.exit_code == 2
    assert "Error: The thing is wrong; do the other thing." in result.output
    assert "Traceback" not in result.output


def test_seed_ranges():
    from loracli.seeds import parse_int_list
    from loracli.errors import UserError

    assert parse_int_list("0-3") == [0, 1, 2, 3]
    assert parse_int_list("1,5,9") == [1, 5, 9]
    assert parse_int_list("0-1,10-11") == [0, 1, 10, 11]
    for bad in ("3-1", "a", "", "-2"):
        with pytest.raises(UserError):
            parse_int_list(bad)


def test_export_without_its_plugin_or_format_is_one_sentence(cli, tmp_path, monkeypatch):
    import loracli
    from loracli.io.convert import base

    ckpt = loracli.save(loracli.create_model("nano", model_channels=8, channel_mult=[1], attn_resolutions=[],
                                             channels_per_head=8), tmp_path / "n.safetensors")
    result = cli("export", ckpt)
    assert result.exit_code == 2 and "Say which format to write" in result.output
    monkeypatch.setattr(base, "plugin_formats", lambda: {})
    result = cli("export", ckpt, "--diffusers", tmp_path / "out")
    assert result.exit_code == 2 and "needs the loracli-diffusers plugin" in result.output
    assert not (tmp_path / "out").exists()
