"""The reproduction studies' statistics: paired differences by seed and their t-intervals."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
studylib = pytest.importorskip("studylib")  # needs the benchmarks' own imports (scipy, PIL)


def test_paired_interval_is_the_student_t_interval():
    entry = studylib.paired_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / 3 ** 0.5  # t(0.975, 2) * sd 1 / sqrt(3)
    assert entry["mean"] == pytest.approx(2.0) and entry["n"] == 3
    assert entry["low"] == pytest.approx(2 - half) and entry["high"] == pytest.approx(2 + half)
    assert "low" not in studylib.paired_interval([0.5])  # one seed: no interval


def run(arm, seed, loss, cfd):
    return {"arm": arm, "seed": seed, "params": 1, "adapter_params": 0, "cfd": cfd,
            "held_out": {"mean": loss, "per_sigma": [loss, 2 * loss]}}


def test_differences_are_paired_by_seed_not_by_position():
    runs = [run("base", 0, 1.0, 5.0), run("base", 1, 2.0, 6.0), run("lora", 1, 1.8, 5.0), run("lora", 0, 0.9, 5.5)]
    fields = {"held_out": lambda r: r["held_out"]["mean"], "cfd": lambda r: r["cfd"]}
    summary = studylib.summarise_arms(runs, ["base", "lora"], "base", fields)
    paired = summary["lora"]["vs_base"]
    assert paired["held_out"]["values"] == pytest.approx([-0.1, -0.1])  # relative, seed 1 then seed 0
    assert paired["held_out"]["low"] == pytest.approx(-0.1) and paired["held_out"]["high"] == pytest.approx(-0.1)
    assert paired["cfd"]["values"] == pytest.approx([-1.0, 0.5])  # absolute
    assert [e["mean"] for e in paired["per_sigma"]] == pytest.approx([-0.1, -0.1])
    assert summary["base"]["vs_base"]["held_out"]["mean"] == 0
    assert studylib.format_interval(paired["cfd"], digits=2).startswith("−0.25 [")


def test_figures_draw_the_paired_intervals_in_percent():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [run("base", 0, 1.0, 5.0), run("base", 1, 2.0, 6.0), run("lora", 0, 0.9, 5.5), run("lora", 1, 1.9, 5.0)]
    summary = studylib.summarise_arms(runs, ["base", "lora"], "base", {"held_out": lambda r: r["held_out"]["mean"]})
    per_sigma = summary["lora"]["vs_base"]["per_sigma"]
    style = ({"lora": "tab:orange"}, {"lora": "s"})
    fig, (ax, bx) = plt.subplots(1, 2)
    studylib.draw_per_sigma(ax, summary, ["lora"], "vs_base", [0.1, 1.0], *style)
    assert list(ax.lines[0].get_ydata()) == pytest.approx([100 * e["mean"] for e in per_sigma])
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(100 * min(e["low"] for e in per_sigma))
    assert band.max() == pytest.approx(100 * max(e["high"] for e in per_sigma))
    studylib.draw_paired(bx, summary, ["lora"], "vs_base", "held_out", 100, *style)
    points = bx.collections[0].get_offsets()[:, 1]
    assert sorted(points) == pytest.approx(sorted(100 * v for v in summary["lora"]["vs_base"]["held_out"]["values"]))
    plt.close(fig)
