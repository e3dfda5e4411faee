"""What a run shows: grid layout per class, the smoothed loss curve, the metrics log on resume."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image

from loracli.train.report import MetricsLog, centred_mean, grid_classes, plot_losses


def test_grid_has_one_column_per_class_when_classes_are_few():
    assert grid_classes(0, 64) == (None, 8)
    classes, columns = grid_classes(10, 64)
    assert columns == 10 and classes == [k % 10 for k in range(60)]
    classes, columns = grid_classes(1000, 64)
    assert columns == 8 and classes[:3] == [0, 1, 2] and len(classes) == 64


def test_centred_mean_by_hand():
    values = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    assert centred_mean(values, 1).tolist() == [1.5, 2.0, 3.0, 17 / 3, 7.0]
    assert centred_mean(values, 0).tolist() == values.tolist()


def test_loss_plot_for_short_and_long_runs(tmp_path):
    for n in (1, 2, 300):
        rows = [{"kimg": k * 0.1, "loss": 1 / (k + 1)} for k in range(n)] + [{"kimg": 99, "loss": float("nan")}]
        path = plot_losses(rows, tmp_path / f"loss{n}.png", "title")
        assert PIL.Image.open(path).format == "PNG"


def test_metrics_log_drops_lines_past_the_resumed_step(tmp_path):
    log = MetricsLog(tmp_path)
    for step in (5, 10, 15):
        log.append({"step": step, "loss": 1.0})
    resumed = MetricsLog(tmp_path, resume_step=10)
    assert [r["step"] for r in resumed.rows] == [5, 10]
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [5, 10]
