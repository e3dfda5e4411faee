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
