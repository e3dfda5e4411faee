"""Sampling img/s: EDM CIFAR-10 DDPM++, Heun 18 steps (NFE 35), through ``loracli.generate`` (the library path).

    python benchmarks/sample_speed.py --num 4096 --batch 1024                   # GPU: bf16, eager and compiled
    LORACLI_EDM_REF=/path/to/edm python benchmarks/sample_speed.py --reference --precision bf16,fp32
    python benchmarks/sample_speed.py --device cpu --num 4 --batch 2 --steps 2 --tiny    # smoke check

Ours: ``loracli.generate.generate`` as ``loracli sample`` calls it (per-seed generators, the sampler, uint8
images on the host), for the ``baseline`` and ``uc-lora`` arms; ``--compile on`` wraps the network in
``torch.compile`` (``--compile-mode reduce-overhead`` adds CUDA graphs). ``--reference PATH`` times the same
loop in NVlabs/edm's generate.py -- its StackedRandomGenerator, ``edm_sampler`` and uint8 conversion -- on
its own network with our weights (fp32, or its fp16 path for ``bf16``). The first batch of each arm is a
warm-up; img/s comes from the synchronised times of the rest, and the 50,000-image time is projected from it.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

import torch

import benchlib
import refcode
from arms import build, check
from flops import SAMPLES, count
from train_speed import Runner, free_memory, split


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arms", default="baseline,uc-lora")
    p.add_argument("--precision", default="bf16", help="comma list of bf16, fp32")
    p.add_argument("--compile", default="off", help="comma list of off, on")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. reduce-overhead")
    p.add_argument("--num", type=int, default=4096, help="timed images per arm (after one warm-up batch)")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=18)
    p.add_argument("--device", default="auto")
    p.add_argument("--reference", nargs="?", const="", default=None, help="also time NVlabs/edm's generate loop: PATH to its checkout, or alone for $LORACLI_EDM_REF")
    p.add_argument("--tiny", action="store_true", help="a small network (smoke runs)")
    benchlib.add_common_args(p)
    return p.parse_args()


def ours(args: argparse.Namespace, arm: str, precision: str, compiled: bool, device: torch.device) -> Runner:
    from loracli.generate import generate

    torch.manual_seed(0)
    net = build("edm", arm, tiny=args.tiny)
    model = torch.compile(net, mode=args.compile_mode) if compiled else net
    seeds = iter(range(10 ** 9))

    def batch() -> None:
        chunk = [next(seeds) for _ in range(args.batch)]
        for _ in generate(model, chunk, steps=args.steps, sampler="heun", batch=args.batch, device=device,
                          precision=precision):
            pass

    name = f"edm {arm} {precision}{' compile' if compiled else ''}"
    return Runner(name, args.batch, batch)


def reference(args: argparse.Namespace, path: Any, precision: str, device: torch.device) -> Runner:
    """NVlabs/edm generate.py's per-batch work: latents from StackedRandomGenerator, edm_sampler, uint8."""
    edm_generate = refcode.edm_generate(path)
    torch.manual_seed(0)
    net = refcode.edm_network(path, build("edm", "baseline", tiny=args.tiny), use_fp16=precision != "fp32")
    net = net.eval().to(device)
    seeds = iter(range(10 ** 9))

    def batch() -> None:
        chunk = [next(seeds) for _ in range(args.batch)]
        rnd = edm_generate.StackedRandomGenerator(device, chunk)
        latents = rnd.randn([len(chunk), net.img_channels, net.img_resolution, net.img_resolution], device=device)
        with torch.no_grad():
            images = edm_generate.edm_sampler(net, latents, None, randn_like=rnd.randn_like, num_steps=args.steps)
        (images * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    label = "fp32" if precision == "fp32" else "fp16"
    return Runner(f"reference edm baseline {label}", args.batch, batch)


def main() -> None:
    args = parse_args()
    from loracli.runtime import pick_device

    device = pick_device(args.device)
    cuda = device.type == "cuda"
    benchlib.set_threads(args, str(device))
    plans: list[tuple[dict[str, Any], Callable[[], Runner]]] = []
    for compiled in [c == "on" for c in split(args.compile)]:
        for precision in split(args.precision):
            for arm in check("edm", split(args.arms)):
                meta = {"arm": arm, "precision": precision, "compile": compiled}
                plans.append((meta, lambda a=arm, p=precision, c=compiled: ours(args, a, p, c, device)))
    if args.reference is not None:
        path = refcode.edm_checkout(args.reference or None, "--reference", required=True)
        for precision in split(args.precision):
            meta = {"arm": "reference", "precision": "fp32" if precision == "fp32" else "fp16", "compile": False}
            plans.append((meta, lambda p=precision: reference(args, path, p, device)))
    batches = max(1, args.num // args.batch)
    sync = benchlib.synchronizer(str(device))
    forward_gflop = count("edm", "baseline", tiny=args.tiny)["forward_gflop"]
    peak = benchlib.gpu_peak(str(device))
    results = []
    if cuda:  # one arm at a time
        benchlib.stop_on_sigterm()
        timed = []
        for i, (meta, make) in enumerate(plans):
            try:
                runner = make()
                runner.times = benchlib.interleaved({"arm": runner.step}, batches, warmup=1, sync=sync)["arm"]
                runner.release()
                timed.append((meta, runner))
            except benchlib.OutOfTime:
                results += [{**m, "error": "out of time"} for m, _ in plans[i:]]
                break
            except Exception as exc:  # keep the other arms' figures
                results.append({**meta, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
                print(results[-1], flush=True)
            finally:
                free_memory()
    else:  # all arms alive, alternating batch by batch
        runners = [(meta, make()) for meta, make in plans]
        times = benchlib.interleaved({str(i): r.step for i, (_, r) in enumerate(runners)}, batches, warmup=1,
                                     clock=benchlib.cpu_clock())
        for i, (_, r) in enumerate(runners):
            r.times = times[str(i)]
        timed = runners
    for meta, runner in timed:
        img_s = runner.batch / benchlib.median(runner.times)
        row = {**meta, "name": runner.name, "batch": runner.batch, "img_s": img_s,
               "spread": benchlib.spread(runner.times), "projected_50k_s": SAMPLES / img_s, "nfe": 2 * args.steps - 1}
        if peak:
            row["mfu"] = forward_gflop * 1e9 * row["nfe"] * img_s / peak
        results.append(row)
        print(row, flush=True)
    summary = [f"{r['name']}: {r['img_s']:.0f} img/s, 50k in {r['projected_50k_s']:.0f} s"
               + (f", MFU {r['mfu']:.0%}" if "mfu" in r else "") for r in results if "img_s" in r]
    refs = {r["precision"]: r for r in results if r.get("arm") == "reference" and "img_s" in r}
    for r in results:  # ours fp32 against their fp32; ours bf16 against both of theirs
        if r.get("arm") == "baseline" and "img_s" in r:
            summary += [f"{r['name']} / {ref['name']} {r['img_s'] / ref['img_s']:.2f}x" for ref in refs.values()
                        if r["precision"] == "bf16" or ref["precision"] == "fp32"]
    summary.append(f"batch {args.batch}, {batches} timed batches, Heun {args.steps} steps")
    rec = benchlib.record("sample_speed", {"arms": results, "forward_gflop": forward_gflop}, "; ".join(summary),
                          str(device))
    benchlib.emit(rec, args)


if __name__ == "__main__":
    main()
