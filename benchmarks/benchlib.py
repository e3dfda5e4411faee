"""What every benchmark shares: the machine description, interleaved timing, the JSON line and the docs row.

Each script in ``benchmarks/`` prints ONE JSON line (``{"benchmark", "date", "machine", "torch", "command",
"results"}``) and appends one row to the results log at the end of ``docs/benchmarks.md`` (``--docs PATH`` to
write elsewhere, ``--no-docs`` to skip). ``record.py`` turns saved JSON lines into rows later, e.g. for lines
a GPU machine wrote into ``$OUT``.

Timings on a shared machine are noisy, so candidates are always timed in the same process, alternating
repeat by repeat (A B A B ...), and compared by their medians.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks.md"
RESULTS_HEADER = ("## Results log\n\nOne row per benchmark run, appended by the scripts (newest last).\n\n"
                  "| date | machine | torch | benchmark | result | command |\n"
                  "| --- | --- | --- | --- | --- | --- |\n")
# Dense bf16 tensor-core peaks (no sparsity), FLOP/s.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """``--threads``, ``--docs PATH`` / ``--no-docs`` (where the row goes), ``--jsonl PATH`` (a copy of the line)."""
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default 1 when timing on the CPU: on a shared machine more threads "
                             "spin-wait for a busy core and the figures become noise)")
    parser.add_argument("--docs", type=Path, default=DOCS, help="markdown file whose results log gets the row")
    parser.add_argument("--no-docs", action="store_true", help="print the JSON line only")
    parser.add_argument("--jsonl", type=Path, default=None, help="also append the JSON line to this file")


def set_threads(args: argparse.Namespace, device: str = "cpu") -> None:
    """Apply ``--threads`` (default: 1 for CPU timings, torch's choice otherwise)."""
    import torch

    threads = args.threads or (1 if not str(device).startswith("cuda") else None)
    if threads:
        torch.set_num_threads(threads)


class OutOfTime(BaseException):
    """SIGTERM arrived (``timeout`` ran out): stop measuring and report what was measured."""


def stop_on_sigterm() -> None:
    """Turn SIGTERM into :class:`OutOfTime`, so a script cut short by ``timeout`` still prints its JSON line."""

    def handler(signum: int, frame: Any) -> None:
        raise OutOfTime()

    signal.signal(signal.SIGTERM, handler)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> str:
    """One phrase naming where the figures come from: the GPU, or the CPU model, threads and load."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    load = "/".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return f"{cpu_model()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads), load {load}"


def gpu_peak(device: str) -> float | None:
    """The dense bf16 peak of a known GPU (H100/H200), else None."""
    import torch

    if not (str(device).startswith("cuda") and torch.cuda.is_available()):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def command_line(argv: list[str] | None = None) -> str:
    """How the script was called, relative to the repository root."""
    argv = sys.argv if argv is None else argv
    script = Path(argv[0])
    try:
        script = script.resolve().relative_to(REPO)
    except ValueError:
        pass
    return " ".join(["python", shlex.quote(str(script)), *map(shlex.quote, argv[1:])])


def synchronizer(device: str) -> Callable[[], None]:
    """Wait for queued device work (CUDA), so host clocks measure it; a no-op on the CPU."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def cpu_clock() -> Callable[[], float]:
    """The clock for CPU timings: with one torch thread every op runs in the calling thread, so that thread's
    CPU time measures the work and ignores the time other processes hold the core; else wall time."""
    import torch

    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def interleaved(candidates: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                sync: Callable[[], None] = lambda: None,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds per call of each candidate, measured A B C A B C ... after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            sync()
            start = clock()
            fn()
            sync()
            times[name].append(clock() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> float:
    """(max - min) / median: how much the repeats disagree."""
    return (max(values) - min(values)) / statistics.median(values) if values else 0.0


def record(benchmark: str, results: Mapping[str, Any], summary: str, device: str = "cpu",
           command: str | None = None) -> dict[str, Any]:
    import torch

    return {"benchmark": benchmark, "date": _dt.date.today().isoformat(), "machine": machine(device),
            "torch": torch.__version__, "command": command or command_line(), "summary": summary,
            "results": dict(results)}


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_row(rec: Mapping[str, Any]) -> str:
    """The results-log row of one record: date | machine | torch | benchmark | result | `command`."""
    command = str(rec["command"]).replace("`", "'")
    cells = [rec["date"], rec["machine"], rec["torch"], rec["benchmark"], rec.get("summary", "")]
    return "| " + " | ".join(_cell(c) for c in cells) + f" | `{_cell(command)}` |\n"


def append_row(path: Path, row: str) -> None:
    """Append ``row`` to the results log of ``path`` (written with its header when the file has none)."""
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    if "## Results log" not in text:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + RESULTS_HEADER
    elif not text.endswith("\n"):
        text += "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + row)


def emit(rec: Mapping[str, Any], args: argparse.Namespace) -> None:
    """Print the JSON line; append it to ``--jsonl`` and its row to ``--docs`` unless ``--no-docs``."""
    line = json.dumps(rec, sort_keys=False)
    print(line, flush=True)
    if getattr(args, "jsonl", None):
        Path(args.jsonl).parent.mkdir(parents=True, exist_ok=True)
        with open(args.jsonl, "a") as f:
            f.write(line + "\n")
    if not getattr(args, "no_docs", False):
        append_row(args.docs, format_row(rec))


def fmt(value: float, digits: int = 3) -> str:
    """A figure with ``digits`` significant digits (no scientific notation for ordinary sizes)."""
    return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
