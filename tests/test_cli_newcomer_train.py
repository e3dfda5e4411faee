"""A newcomer's `loracli train`: bad inputs end in one sentence (exit 2, nothing written), a short run stays
short, Ctrl-C saves and stops, help starts without torch, and the logs are readable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import PIL.Image
import pytest

from train_tiny import write_tiny_toml

REPO = Path(__file__).resolve().parent.parent


def one_sentence_error(result, words: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and words in result.output, result.output


@pytest.mark.parametrize("args, words", [
    (["--lr", "-1"], "--lr"),
    (["--lr", "0"], "greater than 0"),
    (["--label-dim", "-1"], "--label-dim"),
    (["--workers", "-1"], "--workers"),
    (["--dropout", "1.5"], "--dropout"),
    (["--kimg", "-1"], "--kimg"),
    (["--steps", "0"], "--steps"),
    (["--batch", "0"], "--batch"),
    (["--seed", "-1"], "--seed"),
    (["--grid", "-1"], "--grid"),
    (["--threads", "0"], "--threads"),
    (["--cond", "time-lora+"], "has an empty part"),
    (["--cond", "time-lora++class-lora"], "has an empty part"),
    (["--log", "wandb"], "Unknown log 'wandb'"),
])
def test_bad_flags_are_one_sentence_and_write_nothing(cli, tmp_path, args, words):
    out = tmp_path / "run"
    result = cli("train", "nano", "--cond", "time-lora", "--config", write_tiny_toml(tmp_path), "--outdir", out, *args)
    one_sentence_error(result, words)
    assert not out.exists()


@pytest.mark.parametrize("setting, words", [
    ("lr = -0.1", "'train.lr' must be a number greater than 0; got -0.1."),
    ("kimg = -1", "'train.kimg' must be a number greater than 0"),
    ("seed = -1", "'train.seed' must be a whole number from 0"),
    ("workers = 1.5", "'train.workers' must be a whole number"),
])
def test_bad_recipe_values_are_one_sentence(cli, tmp_path, setting, words):
    toml = write_tiny_toml(tmp_path)
    toml.write_text(toml.read_text().replace("[train]\n", f"[train]\n{setting}\n"))
    result = cli("train", "nano", "--config", toml, "--outdir", tmp_path / "run")
    one_sentence_error(result, words)
    assert not (tmp_path / "run").exists()


def test_dropout_from_a_recipe_is_checked_too(cli, tmp_path):
    toml = write_tiny_toml(tmp_path)
    toml.write_text(toml.read_text().replace("[network]\n", "[network]\ndropout = 2\n"))
    one_sentence_error(cli("train", "nano", "--config", toml, "--outdir", tmp_path / "run"),
                       "'network.dropout' must be a number from 0 to 1; got 2.")


def test_outdir_that_is_a_file_or_under_a_file(cli, tmp_path):
    toml, file = write_tiny_toml(tmp_path), tmp_path / "taken.txt"
    file.write_text("mine")
    one_sentence_error(cli("train", "nano", "--config", toml, "--outdir", file), "is a file, not a folder")
    one_sentence_error(cli("train", "nano", "--config", toml, "--outdir", file / "run"), "cannot be created")
    assert file.read_text() == "mine"


def test_failed_writes_are_one_sentence(tmp_path):
    from loracli.errors import UserError
    from loracli.folders import writing_to

    with pytest.raises(UserError, match="Cannot write to '.*' \\(No space left on device\\)"):
        with writing_to(tmp_path):
            raise OSError(28, "No space left on device")


@pytest.mark.parametrize("bad_name, workers", [("0.png", "0"), ("b.png", "0"), ("b.png", "1")])
def test_data_with_a_file_that_is_no_image_names_the_file(cli, tmp_path, bad_name, workers):
    data = tmp_path / "data"
    data.mkdir()
    PIL.Image.new("RGB", (16, 16)).save(data / "a.png")
    (data / bad_name).write_text("not an image")
    result = cli("train", "nano", "--config", write_tiny_toml(tmp_path), "--data", data, "--workers", workers,
                 "--steps", "1", "--batch", "2", "--outdir", tmp_path / "run")
    one_sentence_error(result, f"Cannot decode the image '{data / bad_name}' (not an image PIL can read)")
    assert "BytesIO" not in result.output


def test_ctrl_c_during_start_up_is_one_line_and_exit_130(cli, monkeypatch, capsys):
    import loracli.cli.app as app
    import loracli.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loracli.train, "start_run", interrupted)
    result = cli("train", "nano")
    assert result.exit_code == 130 and "Interrupted" in result.output and "Traceback" not in result.output

    monkeypatch.setattr(app, "make_app", interrupted)  # as if Ctrl-C came while Python imported typer
    with pytest.raises(SystemExit) as stopped:
        app.main()
    assert stopped.value.code == 130 and capsys.readouterr().err == "Interrupted.\n"


def test_ctrl_c_while_training_saves_and_stops_without_the_grid(cli, tmp_path, monkeypatch):
    from loracli.train.loop import Trainer

    step = Trainer.train_step

    def train_step_then_ctrl_c(self, batches):
        loss = step(self, batches)
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends; the loop's handler asks it to stop
        return loss

    monkeypatch.setattr(Trainer, "train_step", train_step_then_ctrl_c)
    out = tmp_path / "run"
    result = cli("train", "nano", "--cond", "time-lora", "--config", write_tiny_toml(tmp_path), "--steps", "50",
                 "--grid", "4", "--outdir", out)
    assert result.exit_code == 130, result.output
    assert "Interrupted; saved at step 2" in result.output and "--resume" in result.output
    assert (out / "state.safetensors").is_file() and (out / "ckpt.safetensors").is_file()
    assert not list(out.glob("grid-*.png")) and "sampling grid" not in result.output


def test_a_short_run_is_short_and_says_what_it_does(cli, tmp_path):
    out = tmp_path / "run"
    result = cli("train", "nano", "--cond", "time-lora", "--config", write_tiny_toml(tmp_path), "--steps", "2",
                 "--outdir", out)
    assert result.exit_code == 0, result.output
    # 2 steps of 8 images: the default grid gets what 10% of that training affords at 2 sampler steps (2 images)
    assert "sampling grid (2 images)..." in result.output
    assert PIL.Image.open(out / "grid-0000002.png").size == (16, 32)  # 2 images of 16x16, one column
    assert " 0 img/s" not in result.output
    # the printed recipe shows what runs: the length in steps only, one snapshot setting, the threads
    assert "train.steps" in result.output and "train.snapshot_every" in result.output
    assert "train.kimg" not in result.output and "snapshot_kimg" not in result.output
    assert "train.threads" in result.output

    result = cli("train", "nano", "--cond", "time-lora", "--resume", "--outdir", out, "--steps", "3", "--grid", "0")
    assert result.exit_code == 0, result.output
    assert not (out / "grid-0000003.png").exists() and "sampling grid" not in result.output
    assert "samples" not in result.output.split("Done at step 3")[1]


def test_grid_size_follows_the_run():
    from loracli.train.report import grid_classes, grid_size

    def recipe(steps, batch=64, images=64, fit=True):
        return {"train": {"steps": steps, "batch": batch}, "sample": {"images": images, "fit_to_run": fit}}

    assert grid_size(recipe(625), evaluations=100) == 64  # the README's run keeps its full grid
    assert grid_size(recipe(6), evaluations=100) == 1  # --steps 6: 0.1 * 3 * 6 * 64 / 100 = 1.15
    assert grid_size(recipe(50), evaluations=100) == 9
    assert grid_size(recipe(6, fit=False), evaluations=100) == 64  # --grid N is taken as given
    assert grid_size(recipe(625, images=0), evaluations=100) == 0
    assert grid_classes(10, 9) == (list(range(9)), 9)  # fewer images than classes: one partial row
    assert grid_classes(10, 64)[0] == [k % 10 for k in range(60)]  # 60 images for 10 classes, not 64


def test_rates_show_only_once_measured():
    from loracli.train.report import format_rate

    assert format_rate(None) == "-" and format_rate(0.0) == "-"
    assert [format_rate(v) for v in (0.41234, 41.234, 412.34, 41234.5)] == ["0.412", "41.2", "412", "41234"]


def test_thread_default_and_overrides(monkeypatch):
    import torch

    from loracli.runtime import default_threads, set_threads

    assert [default_threads(cores) for cores in (1, 2, 3, 4, 8, 64)] == [1, 1, 1, 2, 4, 4]
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
        assert set_threads(1) == 1  # --threads
        assert set_threads(None) == default_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        torch.set_num_threads(2)
        assert set_threads(None) == 2  # $OMP_NUM_THREADS set: torch's own reading of it is left alone
    finally:
        torch.set_num_threads(before)


def test_tensorboard_log_writes_the_metrics_rows(tmp_path, monkeypatch):
    """The event-file writer is torch's SummaryWriter; a stand-in records what it is given, so this runs
    without the optional tensorboard package."""
    import types

    written = []

    class Writer:
        def __init__(self, folder):
            written.append(("open", folder))

        def add_scalar(self, tag, value, step, walltime=None):
            written.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            written.append(("close",))

    monkeypatch.setitem(sys.modules, "tensorboard", types.ModuleType("tensorboard"))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    from loracli.train.report import TensorBoardLog

    log = TensorBoardLog(tmp_path)
    assert written == []  # nothing is written before the first row
    log.append({"step": 5, "kimg": 0.3, "loss": 0.25, "lr": 1e-3, "img_per_s": 40.0, "time": 1.0})
    log.close()
    assert written[0] == ("open", str(tmp_path / "tensorboard"))
    assert ("train/loss", 0.25, 5) in written and ("train/lr", 1e-3, 5) in written and written[-1] == ("close",)


def test_tensorboard_missing_is_one_sentence(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    result = cli("train", "nano", "--config", write_tiny_toml(tmp_path), "--log", "tensorboard",
                 "--outdir", tmp_path / "run")
    one_sentence_error(result, "pip install tensorboard")
    assert not (tmp_path / "run").exists()


def test_tensorboard_event_files_for_real(tmp_path):
    pytest.importorskip("tensorboard")  # optional extra: the stand-in test above covers the logic without it
    from loracli.train.report import TensorBoardLog

    log = TensorBoardLog(tmp_path)
    log.append({"step": 1, "kimg": 0.1, "loss": 0.5, "lr": 1e-3, "img_per_s": 10.0, "time": 1.0})
    log.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_loss_plot_is_readable():
    from loracli.train.report import log_ticks, loss_figure

    assert log_ticks(0.031, 0.048) == tuple(range(1, 10)) and log_ticks(0.01, 10) == (1.0, 2.0, 5.0)
    rows = [{"kimg": k * 0.064, "loss": 0.048 - 0.017 * k / 199} for k in range(200)]
    fig = loss_figure(rows, "nano time-lora")
    ax = fig.axes[0]
    fig.canvas.draw()
    assert "kimg" in ax.get_xlabel() and "loss" in ax.get_ylabel() and ax.get_yscale() == "log"
    low, high = ax.get_ylim()
    labelled = [t for t in ax.yaxis.get_major_locator()() if low <= t <= high]
    assert len(labelled) >= 3  # a loss moving within one decade still gets several labelled ticks
    points, = ax.collections  # the raw values, faint, under the smoothed curve
    assert points.get_alpha() < 0.5 and len(ax.lines) == 1


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["models", "--help"]])
def test_help_does_not_import_torch(argv):
    code = ("import sys\nfrom loracli.cli.app import main\nsys.argv = ['loracli'] + %r\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'LAZY')\n") % argv
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "LAZY", out.stdout + out.stderr


def test_models_lists_everything_without_torch():
    """`loracli models` reads the specs only: no torch (nor diffusers) is imported, yet every built-in model
    (with all its presets) and every built-in variant is listed. Entry points come from the installed
    metadata: after changing them, reinstall (`pip install -e . --no-deps`)."""
    import tomllib

    from loracli import registry

    code = ("import sys\nfrom loracli.cli.app import main\nsys.argv = ['loracli', 'models']\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print([m for m in ('torch', 'diffusers') if m in sys.modules])\n")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "COLUMNS": "400"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    stale = "(imported by an entry point: stale metadata? reinstall with `pip install -e . --no-deps`)\n"
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "[]", stale + out.stdout + out.stderr
    groups = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    rows = {line.split("│")[1].strip(): line for line in out.stdout.splitlines() if line.count("│") > 2}
    for name in groups[registry.MODEL_GROUP]:
        assert name in rows, out.stdout
        assert all(preset in rows[name] for preset in registry.get_model(name).presets), rows[name]
    assert set(groups[registry.CONDITION_GROUP]) <= set(rows), out.stdout


@pytest.mark.parametrize("command", ["train", "sample", "fid", "convert", "info", "models"])
def test_flags_show_no_value_placeholder(cli, command):
    result = cli(command, "--help")
    assert result.exit_code == 0 and "<bool>" not in result.output


def test_train_help_shows_the_device_default_and_real_run_folders(cli):
    import re

    result = cli("train", "--help")
    text = re.sub(r"[\s│]+", " ", result.output)
    assert "default: auto" in text and "runs/nano-time-lora" in text and "60 images for 10" in text
    assert "runs/nano/" not in text


def test_a_run_saved_before_the_new_settings_resumes(cli, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    out = tmp_path / "run"
    assert cli("train", "nano", "--config", write_tiny_toml(tmp_path), "--steps", "1", "--grid", "0",
               "--outdir", out).exit_code == 0
    state = out / "state.safetensors"
    with safe_open(str(state), framework="pt") as f:
        meta = f.metadata()
    recipe = json.loads(meta["recipe"])
    del recipe["train"]["log"], recipe["sample"]["fit_to_run"]  # as an older loracli wrote it
    save_file(load_file(str(state)), str(state), metadata={**meta, "recipe": json.dumps(recipe)})
    result = cli("train", "nano", "--resume", "--outdir", out, "--steps", "2", "--grid", "0")
    assert result.exit_code == 0 and "Done at step 2" in result.output, result.output
