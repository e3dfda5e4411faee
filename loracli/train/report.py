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


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold blue]train"), BarColumn(), TaskProgressColumn(),
        TextColumn("step {task.completed:.0f}/{task.total:.0f}"), TextColumn("kimg {task.fields[kimg]:.1f}"),
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} img/s"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console, transient=False,
    )


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


def plot_losses(rows: list[Mapping[str, Any]], path: Path, title: str) -> Path:
    """The loss against training images (log scale) with a smoothed curve; written atomically as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kept = [r for r in rows if math.isfinite(r["loss"]) and r["loss"] > 0]
    kimg, loss = [r["kimg"] for r in kept], [r["loss"] for r in kept]
    smooth = centred_mean(np.log(loss), len(loss) // 25) if loss else np.zeros(0)
    fig = Figure(figsize=(6, 3.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(kimg, loss, color="tab:blue", alpha=0.35, linewidth=1, label="loss")
    ax.plot(kimg, np.exp(smooth), color="tab:blue", linewidth=2, label="smoothed")
    ax.set(xlabel="training images (kimg)", ylabel="loss (per pixel)", title=title)
    if loss:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    write_bytes(path, buffer.getvalue())
    return path


def grid_classes(label_dim: int, images: int) -> tuple[list[int] | None, int]:
    """Classes for the snapshot grid and its column count: one column per class when there are few."""
    if label_dim == 0:
        return None, max(1, round(math.sqrt(images)))
    if label_dim <= 16:
        rows = max(1, images // label_dim)
        return [k % label_dim for k in range(rows * label_dim)], label_dim
    return [k % label_dim for k in range(images)], max(1, round(math.sqrt(images)))
