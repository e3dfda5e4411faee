"""The top kernels of one training step (torch.profiler), ours and NVlabs/edm's, as markdown tables.

    python benchmarks/profile_step.py --arms baseline,uc-lora --reference --out profile.md      # GPU: batch 512
    python benchmarks/profile_step.py --device cpu --batch 4 --tiny --no-docs                  # smoke check

Each arm (``train_speed.py``'s: the full Trainer step) runs ``--warmup`` steps, then ``--steps`` under the
profiler; the table lists the ``--top`` kernels by self device time (CUDA) or self CPU time, per step. The
tables go to ``--out`` (markdown, for docs/benchmarks.md) and into the JSON line.
"""

from __future__ import annotations

import argparse
from typing import Any

from torch.profiler import ProfilerActivity, profile

import benchlib
import refcode
import train_speed
from arms import check


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="edm", choices=["edm", "iddpm", "nano"])
    p.add_argument("--arms", default="baseline,uc-lora")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--compile", default="off", choices=["off", "on"])
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--reference", nargs="?", const="", default=None,
                   help="also profile NVlabs/edm's step (edm only): PATH to its checkout, or alone for $LORACLI_EDM_REF")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", default=None, help="write the markdown tables here")
    benchlib.add_common_args(p)
    return p.parse_args()


def top_kernels(runner: train_speed.Runner, args: argparse.Namespace, cuda: bool) -> list[dict[str, Any]]:
    sync = benchlib.synchronizer("cuda" if cuda else "cpu")
    for _ in range(args.warmup):
        runner.step()
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            runner.step()
        sync()
    events = prof.key_averages()
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    kernels = [e for e in events if getattr(e, attr, 0) > 0 and (not cuda or e.device_type.name == "CUDA")]
    total = sum(getattr(e, attr) for e in kernels) or 1
    kernels.sort(key=lambda e: -getattr(e, attr))
    return [{"kernel": e.key, "ms_per_step": getattr(e, attr) / 1e3 / args.steps, "share": getattr(e, attr) / total,
             "calls_per_step": e.count / args.steps} for e in kernels[:args.top]] + \
        [{"kernel": "(all kernels)", "ms_per_step": total / 1e3 / args.steps, "share": 1.0,
          "calls_per_step": sum(e.count for e in kernels) / args.steps}]


def markdown(title: str, rows: list[dict[str, Any]]) -> str:
    lines = [f"**{title}**", "", "| kernel | ms/step | share | calls/step |", "| --- | --- | --- | --- |"]
    for r in rows:
        name = r["kernel"].replace("|", "\\|")
        name = name if len(name) <= 90 else name[:87] + "..."
        lines.append(f"| `{name}` | {r['ms_per_step']:.2f} | {r['share']:.1%} | {r['calls_per_step']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    from loracli.runtime import pick_device

    device = pick_device(args.device)
    cuda = device.type == "cuda"
    benchlib.set_threads(args, str(device))
    ts_args = train_speed.parse_args(["--model", args.model, "--device", args.device]
                                     + (["--tiny"] if args.tiny else []))
    batch = args.batch or train_speed.recipe_batch(args.model)
    makers = [(f"{args.model} {arm} {args.precision}{' compile' if args.compile == 'on' else ''}",
               lambda a=arm: train_speed.ours(ts_args, a, args.precision, args.compile == "on", batch))
              for arm in check(args.model, train_speed.split(args.arms))]
    if args.reference is not None:
        if args.model != "edm":
            raise SystemExit("--reference profiles NVlabs/edm's step; use it with --model edm")
        path = refcode.edm_checkout(args.reference or None, "--reference", required=True)
        label = "fp32" if args.precision == "fp32" else "fp16"
        makers.append((f"reference edm baseline {label}",
                       lambda: train_speed.reference(ts_args, path, args.precision, batch)))
    tables, text = {}, []
    for title, make in makers:
        runner = make()
        try:
            tables[title] = top_kernels(runner, args, cuda)
        finally:
            runner.release()
        text.append(markdown(f"{title}, batch {batch}", tables[title]))
        print(text[-1], flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(text) + "\n")
    summary = "; ".join(f"{t}: {rows[-1]['ms_per_step']:.1f} ms/step in kernels, top {rows[0]['kernel'][:40]} "
                        f"{rows[0]['share']:.0%}" for t, rows in tables.items())
    benchlib.emit(benchlib.record("profile", {"batch": batch, "tables": tables}, summary, str(device)), args)


if __name__ == "__main__":
    main()
