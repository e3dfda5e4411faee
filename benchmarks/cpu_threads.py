"""Training step time on the CPU by torch thread count, on an idle machine and beside busy processes.

    python benchmarks/cpu_threads.py                          # 1, 2 and all-core threads; 0 and 1 busy process
    python benchmarks/cpu_threads.py --threads-list 1,2,4 --busy 0,1,2 --batch 64 --steps 5

Why: torch starts one OpenMP thread per core, and its threads spin-wait at every parallel region for the
slowest of them; when another process holds a core, every step waits for the thread that core runs, so a step
can take many times longer than with fewer threads. This measures what ``loracli train`` picks by default on
the CPU (see ``loracli.runtime.default_threads``). Each setting runs in a fresh process (a fresh OpenMP pool):
nano's default preset, a full ``Trainer.train_step`` (data, loss, backward, Adam, EMA), ``--steps`` timed steps
after one warm-up step, wall time (what a user waits), median; settings alternate round by round
(``--rounds``), and "busy" processes are plain Python loops, one core each, started before and stopped after
each measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import benchlib


def worker(threads: int, batch: int, steps: int) -> list[float]:
    """Seconds per training step (after one warm-up step) with ``threads`` torch threads."""
    import tempfile
    from pathlib import Path

    import torch

    from loracli.train.loop import Trainer, make_loader
    from loracli.train.recipe import load_recipe, resolve_duration

    torch.set_num_threads(threads)
    recipe = resolve_duration(load_recipe("nano", None, None, {"cond": "time-lora", "train": {
        "batch": batch, "steps": steps + 1, "device": "cpu"}}))
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(recipe, Path(folder))
        batches = make_loader(trainer.dataset, recipe, trainer.process, trainer.micro_batch, 0)
        trainer.train_step(batches)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            trainer.train_step(batches)
            times.append(time.perf_counter() - start)
        trainer.close()
    return times


def measure(threads: int, busy: int, args: argparse.Namespace) -> list[float]:
    """Step times of one fresh worker process beside ``busy`` spinning processes."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        time.sleep(0.5 if busy else 0)  # let the spinners take their cores
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        out = subprocess.run([sys.executable, __file__, "--worker", "--threads-list", str(threads),
                              "--batch", str(args.batch), "--steps", str(args.steps)],
                             env=env, check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cores = os.cpu_count() or 1
    parser.add_argument("--threads-list", default=",".join(map(str, sorted({1, 2, cores}))),
                        help="thread counts to compare (default: 1, 2 and the core count)")
    parser.add_argument("--busy", default="0,1", help="numbers of busy processes to run beside (default 0,1)")
    parser.add_argument("--batch", type=int, default=16, help="training batch (default 16)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per measurement (default 4)")
    parser.add_argument("--rounds", type=int, default=2, help="times each setting is measured, alternating")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    benchlib.add_common_args(parser)
    args = parser.parse_args()
    threads_list = [int(t) for t in args.threads_list.split(",")]
    if args.worker:
        print(json.dumps(worker(threads_list[0], args.batch, args.steps)))
        return
    busy_list = [int(b) for b in args.busy.split(",")]
    settings = [(t, b) for b in busy_list for t in threads_list]
    times: dict[tuple[int, int], list[float]] = {s: [] for s in settings}
    for _ in range(args.rounds):
        for threads, busy in settings:
            times[threads, busy] += measure(threads, busy, args)
    results = {f"threads={t} busy={b}": {"s_per_step": benchlib.median(v), "spread": benchlib.spread(v)}
               for (t, b), v in times.items()}
    summary = "; ".join(
        f"busy {b}: " + ", ".join(f"{t} thr {benchlib.fmt(benchlib.median(times[t, b]))} s" for t in threads_list)
        for b in busy_list) + f" (nano time-lora train step, batch {args.batch}, median of {args.rounds}x{args.steps})"
    benchlib.emit(benchlib.record("cpu_threads", results, summary), args)


if __name__ == "__main__":
    main()
