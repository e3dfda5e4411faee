"""Training img/s and peak memory through loracli's own Trainer, per arm, precision and compile setting.

    python benchmarks/train_speed.py --model edm --precision bf16,fp32 --compile off      # GPU: batch 512
    python benchmarks/train_speed.py --model edm --reference /path/to/edm                  # + NVlabs/edm's step
    python benchmarks/train_speed.py --model iddpm --arms baseline,time-lora
    python benchmarks/train_speed.py --device cpu --batch 4 --steps 3 --tiny               # smoke check

Arms: edm (CIFAR-10 DDPM++): ``baseline``, ``uc-lora``, ``only-lora`` (UC-LoRA without scale-and-shift);
iddpm (CIFAR-10): ``baseline``, ``time-lora``; nano: ``baseline``, ``time-lora``. An arm name ending in
``@conv`` (e.g. ``uc-lora@conv``, eager only) forces the adapters onto their 1x1-convolution route, to compare
it with the GEMM route they take on channels_last activations. Each arm is a full
``Trainer.train_step`` (data loader, augmentation, loss, backward, Adam, EMA) on the preset's recipe.
``--reference PATH`` adds NVlabs/edm's own step on the same network, batch and data: its EDMPrecond, EDMLoss,
AugmentPipe and Adam, with the per-step work of its training_loop.py (fp32 with TF32 off, or its fp16 path
for ``bf16``). On CUDA each arm runs alone after ``--warmup`` steps (img/s from the synchronised step times,
peak memory from ``torch.cuda.max_memory_allocated``); on the CPU the arms alternate step by step. A batch
that does not fit is halved until it does (``batch`` in the results says what ran).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

import benchlib
import refcode
from arms import ARMS, PRESETS, TINY, check

NEVER = 10 ** 9  # steps between snapshots/log lines: the benchmark never writes any
CONV_ROUTE = "@conv"  # arm suffix: every adapter forced onto the 1x1-convolution route (A/B of the GEMM route)


@dataclass
class Runner:
    """One arm, built and ready: ``step()`` runs one optimiser step; ``close()`` frees it."""

    name: str
    batch: int
    step: Callable[[], Any]
    close: Callable[[], None] = lambda: None
    times: list[float] = field(default_factory=list)
    peak_bytes: int | None = None

    def release(self) -> None:
        """Close, and drop the closures that hold the network, so the next arm starts with free memory."""
        self.close()
        self.step = self.close = _nothing


def _nothing() -> None:
    pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(ARMS), default="edm")
    p.add_argument("--arms", default=None, help="comma list (default: all arms of the model)")
    p.add_argument("--precision", default="bf16,fp32", help="comma list of bf16, fp32")
    p.add_argument("--compile", default="off", help="comma list of off, on")
    p.add_argument("--batch", type=int, default=None, help="global batch (default: the recipe's; halved on OOM)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per arm")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, cudnn autotuning)")
    p.add_argument("--device", default="auto")
    p.add_argument("--label-dim", type=int, default=0, help="class-conditional networks (e.g. 10)")
    p.add_argument("--data", default=None, help="training data (default: the built-in shapes)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader processes (default: the Trainer's)")
    p.add_argument("--reference", nargs="?", const="", default=None,
                   help="also time NVlabs/edm's own step (edm only): PATH to its checkout, or alone for "
                                        "$LORACLI_EDM_REF")
    p.add_argument("--tiny", action="store_true", help="small networks (CPU smoke runs)")
    benchlib.add_common_args(p)
    return p.parse_args(argv)


def split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def recipe_for(args: argparse.Namespace, arm: str, precision: str, compiled: bool, batch: int) -> dict[str, Any]:
    from loracli.train.recipe import load_recipe, resolve_duration

    settings = ARMS[args.model][arm]
    overrides = {"cond": settings["cond"], "only_lora": settings.get("only_lora", False),
                 "label_dim": args.label_dim, "data": args.data,
                 "network": TINY[args.model] if args.tiny else {},
                 "train": {"batch": batch, "batch_gpu": None, "steps": NEVER, "precision": precision,
                           "compile": compiled, "device": args.device, "workers": args.workers,
                           "log_every": NEVER, "snapshot_every": NEVER},
                 "sample": {"images": 0}}
    return resolve_duration(load_recipe(args.model, PRESETS[args.model], None, overrides))


def recipe_batch(model: str) -> int:
    """The global batch of the model's recipe (EDM CIFAR-10: 512, IDDPM CIFAR-10: 128)."""
    from loracli.train.recipe import load_recipe

    return int(load_recipe(model, PRESETS[model])["train"]["batch"])


@contextlib.contextmanager
def conv_route(active: bool):
    """While active, LoRA adapters take their 1x1-convolution route even for channels_last activations."""
    from loracli.conditioning.lora import LoRAProjection

    saved = LoRAProjection.matrix_route
    if active:
        LoRAProjection.matrix_route = lambda self, x: self.features_last
    try:
        yield
    finally:
        LoRAProjection.matrix_route = saved


def ours(args: argparse.Namespace, arm: str, precision: str, compiled: bool, batch: int) -> Runner:
    """loracli's Trainer for one arm; ``step`` is ``Trainer.train_step`` on its own data loader."""
    from loracli.train import Trainer
    from loracli.train.loop import make_loader

    folder = tempfile.TemporaryDirectory(prefix="train_speed_")
    forced = arm.endswith(CONV_ROUTE)
    recipe = recipe_for(args, arm.removesuffix(CONV_ROUTE), precision, compiled, batch)
    trainer = Trainer(recipe, Path(folder.name))
    batches = make_loader(trainer.dataset, recipe, trainer.process, trainer.micro_batch, 0)

    def step() -> Any:
        with conv_route(forced):
            return trainer.train_step(batches)

    def close() -> None:
        trainer.close()
        folder.cleanup()

    name = f"{args.model} {arm} {precision}{' compile' if compiled else ''}"
    return Runner(name, batch, step, close)


def reference(args: argparse.Namespace, path: Path, precision: str, batch: int) -> Runner:
    """NVlabs/edm's training step (training_loop.py's per-step work) on the baseline network and our data."""
    refcode.importable(path)
    from training.augment import AugmentPipe  # noqa: PLC0415 -- the reference, from the given checkout
    from training.loss import EDMLoss  # noqa: PLC0415

    from loracli.build import build_model, resolve_config
    from loracli.data import open_dataset
    from loracli.train import distributed
    from loracli.train.loop import make_loader

    recipe = recipe_for(args, "baseline", precision, False, batch)
    process = distributed.start(args.device)
    device = process.device
    network = {**recipe["network"], "augment_dim": recipe["network"].get("augment_dim", 9)}
    torch.manual_seed(0)
    ours_net = build_model(resolve_config("edm", "cifar10", [], False, args.label_dim, **network))
    net = refcode.edm_network(path, ours_net, use_fp16=precision != "fp32").train().requires_grad_(True).to(device)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    train = recipe["train"]
    optimizer = torch.optim.Adam(net.parameters(), lr=train["lr"], betas=tuple(train["betas"]), eps=train["eps"])
    loss_fn = EDMLoss()
    augment = AugmentPipe(**recipe["augment"]) if recipe["augment"].get("p") else None
    if device.type == "cuda":  # training_loop.py's settings
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    batches = make_loader(open_dataset(recipe["data"], 32), recipe, process, batch, 0)
    label_dim = args.label_dim

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        images, labels = next(batches)
        images = images.to(device, non_blocking=True).to(torch.float32) / 127.5 - 1
        labels = (torch.nn.functional.one_hot(labels.to(device).long(), label_dim).float() if label_dim
                  else torch.zeros([batch, 0], device=device))
        loss = loss_fn(net=net, images=images, labels=labels, augment_pipe=augment)
        loss.sum().mul(1 / batch).backward()
        for group in optimizer.param_groups:
            group["lr"] = train["lr"]
        for param in net.parameters():
            if param.grad is not None:
                torch.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
        optimizer.step()
        with torch.no_grad():
            for p_ema, p_net in zip(ema.parameters(), net.parameters()):
                p_ema.copy_(p_net.detach().lerp(p_ema, 0.999))

    label = "fp32" if precision == "fp32" else "fp16"
    return Runner(f"reference edm baseline {label}", batch, step, lambda: distributed.stop(process))


def mfu_inputs(args: argparse.Namespace, meta: dict[str, Any], device: str) -> tuple[float | None, float | None]:
    """(training GFLOP per image of the arm's network, the GPU's bf16 peak) -- (None, None) off H100/H200."""
    peak = benchlib.gpu_peak(device)
    if peak is None:
        return None, None
    from flops import count

    arm = "baseline" if meta["arm"] == "reference" else meta["arm"].removesuffix(CONV_ROUTE)
    return count(meta["model"], arm, tiny=args.tiny, label_dim=args.label_dim)["train_gflop"], peak


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def free_memory() -> None:
    """Forget the previous arm: its compiled graphs (each arm compiles its own network) and cached blocks."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_alone(make: Callable[[int], Runner], batch: int, args: argparse.Namespace, cuda: bool) -> Runner:
    """Build, warm up and time one arm, halving the batch while it does not fit."""
    while True:
        runner = None
        try:
            if cuda:
                free_memory()
                torch.cuda.reset_peak_memory_stats()
            runner = make(batch)
            sync = benchlib.synchronizer("cuda" if cuda else "cpu")
            times = benchlib.interleaved({"arm": runner.step}, args.steps, warmup=args.warmup, sync=sync)
            runner.times = times["arm"]
            runner.peak_bytes = torch.cuda.max_memory_allocated() if cuda else None
            runner.release()
            return runner
        except RuntimeError as exc:
            if runner is not None:
                runner.release()
            if not (cuda and is_oom(exc)) or batch <= 8:
                raise
            print(f"out of memory at batch {batch}; trying {batch // 2}", flush=True)
            batch //= 2


def summarise(results: list[dict[str, Any]]) -> str:
    """Each arm's img/s (and GiB), then the LoRA and reference ratios at equal precision and compile."""
    by_name = {r["name"]: r for r in results if "img_s" in r}
    parts = [f"{r['name']}: {r['img_s']:.0f} img/s" + (f", {r['peak_gib']:.1f} GiB" if r.get("peak_gib") else "")
             + (f", MFU {r['mfu']:.0%}" if r.get("mfu") else "") for r in results if "img_s" in r]
    parts += [f"{r['name']}: {r['error']}" for r in results if "error" in r]
    for r in results:
        base = by_name.get(r["name"].replace(r.get("arm", ""), "baseline"))
        if "img_s" in r and base is not None and base is not r:
            ratio = f"{r['name']}/baseline {r['img_s'] / base['img_s']:.3f}x img/s"
            if r.get("peak_gib") and base.get("peak_gib"):
                ratio += f", {r['peak_gib'] / base['peak_gib']:.3f}x mem"
            parts.append(ratio)
    refs = [r for r in results if r.get("arm") == "reference" and "img_s" in r]
    for ref in refs:  # ours fp32 against their fp32; ours bf16 against both of theirs
        for r in results:
            if r.get("arm") == "baseline" and "img_s" in r and (r["precision"] == "bf16" or ref["precision"] == "fp32"):
                parts.append(f"{r['name']} / {ref['name']} {r['img_s'] / ref['img_s']:.2f}x")
    batches = sorted({r["batch"] for r in results if "batch" in r})
    return "; ".join(parts + [f"batch {'/'.join(map(str, batches))}"])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from loracli.runtime import pick_device

    device = pick_device(args.device)
    cuda = device.type == "cuda"
    benchlib.set_threads(args, str(device))
    arms = split(args.arms) if args.arms else list(ARMS[args.model])
    check(args.model, [a.removesuffix(CONV_ROUTE) for a in arms])
    batch = args.batch or recipe_batch(args.model)
    path = None
    if args.reference is not None:
        if args.model != "edm":
            raise SystemExit("--reference runs NVlabs/edm's step; use it with --model edm")
        path = refcode.edm_checkout(args.reference or None, "--reference", required=True)
    plans: list[tuple[dict[str, Any], Callable[[int], Runner]]] = []
    for compiled in [c == "on" for c in split(args.compile)]:
        for precision in split(args.precision):  # ours, then the reference at the same precision
            for arm in arms:
                meta = {"model": args.model, "arm": arm, "precision": precision, "compile": compiled}
                plans.append((meta, lambda b, a=arm, p=precision, c=compiled: ours(args, a, p, c, b)))
            if path is not None and not compiled:
                meta = {"model": "edm", "arm": "reference", "precision": "fp32" if precision == "fp32" else "fp16",
                        "compile": False}
                plans.append((meta, lambda b, p=precision: reference(args, path, p, b)))

    results: list[dict[str, Any]] = []
    if cuda:
        benchlib.stop_on_sigterm()
        for i, (meta, make) in enumerate(plans):
            try:
                runner = run_alone(make, batch, args, cuda)
            except benchlib.OutOfTime:
                results += [{**m, "name": f"{m['model']} {m['arm']} {m['precision']}", "error": "out of time"}
                            for m, _ in plans[i:]]
                break
            except Exception as exc:  # one arm failing must not lose the others' figures
                results.append({**meta, "name": f"{meta['model']} {meta['arm']} {meta['precision']}",
                                "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
                print(f"{results[-1]['name']} failed: {results[-1]['error']}", flush=True)
                free_memory()
                continue
            results.append(describe(meta, runner, *mfu_inputs(args, meta, str(device))))
            print(results[-1], flush=True)
    else:  # the CPU is shared and noisy: all arms alive, alternating step by step
        runners = [(meta, make(batch)) for meta, make in plans]
        times = benchlib.interleaved({str(i): r.step for i, (_, r) in enumerate(runners)}, args.steps,
                                     warmup=args.warmup, clock=benchlib.cpu_clock())
        for i, (meta, runner) in enumerate(runners):
            runner.times = times[str(i)]
            results.append(describe(meta, runner))
            runner.release()
    rec = benchlib.record("train_speed", {"arms": results}, summarise(results), str(device))
    benchlib.emit(rec, args)


def describe(meta: dict[str, Any], runner: Runner, train_gflop: float | None = None,
             peak: float | None = None) -> dict[str, Any]:
    """The arm's figures; with the FLOPs of a training step per image and the GPU's peak, its MFU."""
    seconds = benchlib.median(runner.times)
    out = {**meta, "name": runner.name, "batch": runner.batch, "img_s": runner.batch / seconds,
           "step_ms": seconds * 1e3, "spread": benchlib.spread(runner.times)}
    if runner.peak_bytes is not None:
        out["peak_gib"] = runner.peak_bytes / 2 ** 30
    if train_gflop and peak:
        out["mfu"] = train_gflop * 1e9 * out["img_s"] / peak
    return out


if __name__ == "__main__":
    main()
