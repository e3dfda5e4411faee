"""What the user sees of a run: the resolved config, a progress bar, metrics.jsonl, the loss plot, sample grids."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from loracli.io.atomic import write_bytes, write_text

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
TENSORBOARD_DIR = "tensorboard"
# A sampled grid image costs `evaluations` network passes, a trained image about 3 (forward and backward); by
# default the grid may cost this fraction of the run's training.
GRID_BUDGET = 0.1


def config_table(recipe: Mapping[str, Any], title: str) -> Table:
    """The resolved recipe, one row per setting (tables flattened to dotted names)."""
    table = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    table.add_column(style="cyan")
    table.add_column()

    def rows(prefix: str, value: Any) -> Iterable[tuple[str, str]]:
        if isinstance(value, Mapping) and value:
            for key, inner in value.items():
                yield from rows(f"{prefix}.{key}" if prefix else key, inner)
        elif value not in (None, "", {}):
            yield prefix, json.dumps(value) if not isinstance(value, str) else value

    for name, value in rows("", recipe):
        table.add_row(name, value)
    return table


def shown_settings(recipe: Mapping[str, Any], grid_images: int, threads: int | None = None) -> dict[str, Any]:
    """The recipe as it will run, for the printed table: the length and snapshot interval in steps only (with
    the length in kimg beside it), the grid's actual size, and the CPU threads."""
    shown = json.loads(json.dumps(recipe))
    train = shown["train"]
    steps = train["steps"]
    train["steps"] = f"{steps} ({steps * train['batch'] / 1000:g} kimg)"
    if train["snapshot_every"] >= steps:
        train["snapshot_every"] = f"{train['snapshot_every']} (one snapshot, at the end)"
    for key in ("kimg", "init_kimg", "snapshot_kimg"):  # already turned into steps and snapshot_every
        train.pop(key, None)
    if threads is not None:
        train["threads"] = threads
    shown["sample"] = {key: value for key, value in shown["sample"].items() if key != "fit_to_run"}
    shown["sample"]["images"] = grid_images if grid_images else "0 (no grid)"
    return shown


def grid_size(recipe: Mapping[str, Any], evaluations: int) -> int:
    """Images in each snapshot's grid: ``sample.images``; with ``fit_to_run`` (the default) at most what costs
    ``GRID_BUDGET`` of the run's training, so that a short run is not followed by minutes of sampling."""
    images, train = int(recipe["sample"]["images"]), recipe["train"]
    if not recipe["sample"].get("fit_to_run", True):
        return images
    affordable = GRID_BUDGET * 3 * train["steps"] * train["batch"] / max(1, evaluations)
    return min(images, int(affordable))


def format_rate(images_per_second: float | None) -> str:
    """Three significant figures ("0.412", "41.2", "4120"), or "-" before anything is measured."""
    if images_per_second is None or not images_per_second > 0:
        return "-"
    return f"{images_per_second:.3g}" if images_per_second < 1000 else f"{images_per_second:.0f}"


def progress_bar(console: Console) -> Progress:
    """The training bar; its description says what the run is doing (training, sampling the grid, saving)."""
    return Progress(
        TextColumn("[bold blue]{task.description}"), BarColumn(), TaskProgressColumn(),
        TextColumn("step {task.completed:.0f}/{task.total:.0f}"), TextColumn("kimg {task.fields[kimg]:.1f}"),
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} img/s"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console, transient=False,
    )


class TensorBoardLog:
    """TensorBoard event files in ``<run>/tensorboard`` (``--log tensorboard``): the rows of metrics.jsonl as
    scalars over the step. Needs the optional ``tensorboard`` package, checked when the run starts."""

    def __init__(self, run_dir: Path) -> None:
        try:
            import tensorboard  # noqa: F401  (torch's writer needs it, and fails late without it)
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            from loracli.errors import UserError

            raise UserError("--log tensorboard needs the tensorboard package; pip install tensorboard "
                            "(or pip install 'loracli[tensorboard]').") from None
        self.folder, self.make_writer, self.writer = run_dir / TENSORBOARD_DIR, SummaryWriter, None

    def append(self, row: Mapping[str, Any]) -> None:
        if self.writer is None:  # created with the first row: nothing is written before the run starts
            self.writer = self.make_writer(str(self.folder))
        for key in ("loss", "lr", "img_per_s", "kimg"):
            if row.get(key) is not None:
                self.writer.add_scalar(f"train/{key}", row[key], row["step"], walltime=row.get("time"))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class MetricsLog:
    """``metrics.jsonl``: one JSON object per progress update; kept in memory for the loss plot."""

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        self.path = run_dir / METRICS_FILE
        self.rows: list[dict[str, Any]] = []
        if resume_step is not None and self.path.is_file():
            # Drop what a continuation past the resumed state logged: it is about to be redone.
            self.rows = [r for r in map(json.loads, self.path.read_text().splitlines()) if r["step"] <= resume_step]
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))

    def append(self, row: Mapping[str, Any]) -> None:
        self.rows.append(dict(row))
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def centred_mean(values: np.ndarray, half_width: int) -> np.ndarray:
    """The mean over a window of ``2·half_width + 1`` points centred on each point (shorter at the ends)."""
    window = np.ones(2 * half_width + 1)
    return np.convolve(values, window, "same") / np.convolve(np.ones_like(values), window, "same")


def log_ticks(low: float, high: float) -> tuple[float, ...]:
    """Mantissas of the labelled ticks on a log axis from ``low`` to ``high``: every 1..9 within a decade or
    two, 1-2-5 over a few, powers of ten beyond; so a curve that barely moves still gets several labels."""
    decades = math.log10(high / low) if low > 0 and high > low else 0.0
    return tuple(range(1, 10)) if decades <= 1.5 else (1.0, 2.0, 5.0) if decades <= 4 else (1.0,)


def plot_losses(rows: list[Mapping[str, Any]], path: Path, title: str) -> Path:
    """:func:`loss_figure` written atomically as a PNG."""
    buffer = io.BytesIO()
    loss_figure(rows, title).savefig(buffer, format="png")
    write_bytes(path, buffer.getvalue())
    return path


def loss_figure(rows: list[Mapping[str, Any]], title: str) -> Any:
    """The loss against training images on a log scale: faint points for each logged value, a smoothed curve
    (centred mean of log-loss) over them, labelled axes and enough labelled ticks to read values off."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    kept = [r for r in rows if math.isfinite(r["loss"]) and r["loss"] > 0]
    kimg, loss = [r["kimg"] for r in kept], [r["loss"] for r in kept]
    half_width = max(len(loss) // 25, 1 if len(loss) >= 5 else 0)
    smooth = centred_mean(np.log(loss), half_width) if loss else np.zeros(0)
    fig = Figure(figsize=(7, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(kimg, loss, s=6, color="tab:blue", alpha=0.25, linewidths=0, label="logged loss")
    ax.plot(kimg, np.exp(smooth), color="tab:blue", linewidth=2, label="smoothed")
    ax.set(xlabel="training images (thousands, kimg)", ylabel="training loss (mean per pixel, log scale)",
           title=title)
    if loss:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=log_ticks(min(loss), max(loss))))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    ax.legend()
    fig.tight_layout()
    return fig


def grid_classes(label_dim: int, images: int) -> tuple[list[int] | None, int]:
    """Classes for the snapshot grid and its column count: one column per class when there are few (whole
    rows: 60 images for 10 classes and 64 asked; fewer images than classes make one partial row)."""
    if label_dim == 0:
        return None, max(1, round(math.sqrt(images)))
    if label_dim <= 16:
        if images < label_dim:
            return list(range(images)), max(1, images)
        return [k % label_dim for k in range(images // label_dim * label_dim)], label_dim
    return [k % label_dim for k in range(images)], max(1, round(math.sqrt(images)))
