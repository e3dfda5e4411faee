"""The shared helper of benchmarks/: the docs row, the results log it is appended to, interleaved timing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHLIB = Path(__file__).resolve().parent.parent / "benchmarks" / "benchlib.py"


@pytest.fixture(scope="module")
def benchlib():
    spec = importlib.util.spec_from_file_location("benchlib", BENCHLIB)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record(**changes):
    rec = {"benchmark": "train_speed", "date": "2026-01-02", "machine": "H100 (80 GiB)", "torch": "2.11.0",
           "command": "python benchmarks/train_speed.py --arms a|b", "summary": "edm: 10 img/s | 2 GiB",
           "results": {}}
    return {**rec, **changes}


def test_row_holds_every_column_with_pipes_escaped(benchlib):
    row = benchlib.format_row(record())
    assert row == ("| 2026-01-02 | H100 (80 GiB) | 2.11.0 | train_speed | edm: 10 img/s \\| 2 GiB | "
                   "`python benchmarks/train_speed.py --arms a\\|b` |\n")
    assert row.count(" | ") == 5  # six cells: no unescaped pipe splits one


def test_backticks_in_a_command_do_not_end_its_code_span(benchlib):
    assert "`echo 'x'`" in benchlib.format_row(record(command="echo `x`"))


def test_rows_go_under_the_results_log_which_is_created_once(benchlib, tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nHow to run.\n")
    benchlib.append_row(doc, "| first |\n")
    benchlib.append_row(doc, "| second |\n")
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nHow to run.\n\n## Results log")
    assert text.count("## Results log") == 1 and text.count("| date | machine |") == 1
    assert text.endswith("| first |\n| second |\n")
    fresh = tmp_path / "out" / "rows.md"
    benchlib.append_row(fresh, "| only |\n")
    assert fresh.read_text() == benchlib.RESULTS_HEADER + "| only |\n"


def test_candidates_alternate_after_untimed_warmup_rounds(benchlib):
    calls = []
    times = benchlib.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3,
                                 warmup=2, sync=lambda: calls.append("sync"))
    work = [c for c in calls if c != "sync"]
    assert work == ["a", "b"] * 5
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for v in times.values() for t in v)
