"""A small, rerunnable reproduction of the paper's EDM comparison (PAPER.md §7.2), trained by `loracli train`.

Four arms of a scaled-down EDM DDPM++ on CIFAR-10, each trained with the same recipe, steps, seed and data
order (per seed), as subprocesses of the real CLI (`python -m loracli train edm --config ...`):

    baseline    --cond none                  scale-and-shift conditioning only (EDM as published)
    with-lora   --cond uc-lora               scale-and-shift + UC-LoRA on the attention layers
    only-lora   --cond uc-lora --only-lora   attention LoRA is the only way σ reaches the U-Net
    no-cond     --cond none --only-lora      σ reaches the network only through EDM's c_in/c_skip/c_out

Metrics: (1, primary) held-out EDM-weighted loss on the test images at 16 log-spaced σ in [0.002, 80] with
fixed noise (loracli.diffusion.evaluate), for every snapshot (the curve) and the final EMA network; (2) a
"classifier Fréchet distance" (CFD) of Heun-sampled images in the feature space of a small CNN trained here on
the same training images (benchmarks/small_classifier.py; NOT an FID); (3) Inception FID with `--inception
PATH` (loracli's FID code, clean-fid mode 'clean'; the JPEG data makes it incomparable with published FIDs);
(4) training img/s and parameter counts. Output: results.json and figures in --out (and --figures).

    python benchmarks/reproduce_small.py --profile cpu --train cifar10-jpeg-train.zip --test cifar10-jpeg-test.zip
    python benchmarks/reproduce_small.py --profile gpu --train ... --test ... --inception inception-2015-12-05.pt

Runs, evaluations and the classifier are cached in --out: rerunning continues an interrupted study (a run
cut short resumes with `loracli train --resume`), and `--seeds 0,1,2` adds a seed to a finished one.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import small_classifier  # noqa: E402

import loracli  # noqa: E402
from loracli.data import open_dataset  # noqa: E402
from loracli.diffusion.evaluate import held_out_loss, sigma_grid  # noqa: E402
from loracli.errors import UserError  # noqa: E402
from loracli.images import make_grid  # noqa: E402
from loracli.io.atomic import atomic_path, write_text  # noqa: E402

ARMS = {  # name: (--cond, --only-lora)
    "baseline": ("none", False),
    "with-lora": ("uc-lora", False),
    "only-lora": ("uc-lora", True),
    "no-cond": ("none", True),
}
PROFILES: dict[str, dict[str, Any]] = {
    # What ran on a shared 2-core CPU: 16x16 CIFAR-10 (2x2 box-filtered), the §7.2 shape scaled down once more.
    "cpu": {"resolution": 16, "batch": 64, "steps": 2000, "lr": 1e-3, "lr_rampup_kimg": 10, "ema_halflife_kimg": 5,
            "network": {"model_channels": 32, "channel_mult": [1, 2, 2], "num_blocks": 1, "attn_resolutions": [8]},
            "snapshots": 8, "curve_images": 256, "eval_images": 1000, "cfd_num": 1000, "classifier_epochs": 3,
            "device": "cpu", "compile": False},
    # PAPER.md §7.2 on one GPU: DDPM++ 64 channels, mult [2,2,2], 2 blocks, attention at 16; about 10 min per arm.
    "gpu": {"resolution": 32, "batch": 512, "steps": 6000, "lr": 1e-3, "lr_rampup_kimg": 300, "ema_halflife_kimg": 50,
            "network": {"model_channels": 64, "channel_mult": [2, 2, 2], "num_blocks": 2, "attn_resolutions": [16]},
            "snapshots": 10, "curve_images": 2000, "eval_images": 10000, "cfd_num": 10000, "classifier_epochs": 15,
            "device": "cuda", "compile": True},
}
HELD_OUT_SEED = 1234  # the fixed noise of the held-out loss
SAMPLE_STEPS = 18     # EDM Heun, NFE 35 (the paper's CIFAR-10 sampler)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", type=Path, required=True, help="training images: EDM dataset zip (32x32 CIFAR-10)")
    p.add_argument("--test", type=Path, required=True, help="held-out images: EDM dataset zip")
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--out", type=Path, default=None, help="study folder (default runs/reproduce-<profile>)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma list of {', '.join(ARMS)}")
    p.add_argument("--seeds", default="0,1", help="training seeds (each arm once per seed)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per run (profile default)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--eval-images", type=int, default=None, help="test images for the final held-out loss")
    p.add_argument("--curve-images", type=int, default=None, help="test images for the per-snapshot curve")
    p.add_argument("--cfd-num", type=int, default=None, help="samples per run for the classifier Fréchet distance")
    p.add_argument("--inception", type=Path, default=None, help="inception-2015-12-05.pt: also compute FID")
    p.add_argument("--fid-num", type=int, default=10000, help="samples per run for FID (with --inception)")
    p.add_argument("--device", default=None, help="cpu or cuda (profile default)")
    p.add_argument("--figures", type=Path, default=None, help="also write the figures here (e.g. docs/figures)")
    p.add_argument("--timing-repeats", type=int, default=20, help="timed training steps per arm (interleaved)")
    p.add_argument("--train-only", action="store_true", help="train the runs, skip evaluation")
    return p.parse_args()


# -- data -------------------------------------------------------------------------------------------------------
def load_images(path: Path, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """All images of an EDM zip as uint8 ``[N, 3, R, R]`` (box-filtered down from 32x32 if R < 32), labels."""
    data = open_dataset(path)
    factor = data.resolution // resolution
    if factor * resolution != data.resolution:
        raise SystemExit(f"{path} is {data.resolution}x{data.resolution}; cannot box-filter it to {resolution}.")
    items = [data[i] for i in range(len(data))]
    images = np.stack([image for image, _ in items])
    labels = np.asarray([label for _, label in items], dtype=np.int64)
    if factor > 1:
        n = len(images)
        images = images.reshape(n, 3, resolution, factor, resolution, factor).astype(np.float32).mean(axis=(3, 5))
        images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    return images, labels


def write_zip(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """An EDM dataset zip of PNGs with dataset.json labels (what `loracli train --data` reads)."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
        names = []
        for i, image in enumerate(images):
            name = f"{i // 1000:05d}/img{i:08d}.png"
            buffer = io.BytesIO()
            PIL.Image.fromarray(image.transpose(1, 2, 0)).save(buffer, format="PNG")
            z.writestr(name, buffer.getvalue())
            names.append(name)
        z.writestr("dataset.json", json.dumps({"labels": [[n, int(y)] for n, y in zip(names, labels)]}))
    return path


def prepare_data(args: argparse.Namespace, setting: dict[str, Any], out: Path) -> dict[str, Any]:
    """Train/test arrays at the study's resolution; a zip for `loracli train` (the original if 32x32)."""
    resolution = setting["resolution"]
    cache = out / "data" / f"arrays-{resolution}.npz"
    if cache.exists():
        arrays = dict(np.load(cache))
    else:
        print(f"reading {args.train} and {args.test} at {resolution}x{resolution} ...", flush=True)
        (train_x, train_y), (test_x, test_y) = load_images(args.train, resolution), load_images(args.test, resolution)
        arrays = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
    zip_path = args.train.resolve()
    if open_dataset(args.train).resolution != resolution:
        zip_path = out / "data" / f"{args.train.stem}-{resolution}x{resolution}.zip"
        if not zip_path.exists():
            write_zip(zip_path, arrays["train_x"], arrays["train_y"])
    return {**arrays, "train_zip": zip_path}


# -- training -----------------------------------------------------------------------------------------------------
def recipe_toml(setting: dict[str, Any]) -> str:
    """The study's --config layer on top of loracli's edm-cifar10 recipe."""
    steps = setting["steps"]
    network = {"img_resolution": setting["resolution"], **setting["network"], "dropout": 0.0}
    train = {"batch": setting["batch"], "steps": steps, "lr": setting["lr"],
             "lr_rampup_kimg": setting["lr_rampup_kimg"], "ema_halflife_kimg": setting["ema_halflife_kimg"],
             "ema_rampup_ratio": 0.05, "snapshot_every": max(1, steps // setting["snapshots"]),
             "log_every": max(1, min(50, steps // 40)), "device": setting["device"], "compile": setting["compile"]}
    tables = {"network": network, "train": train, "augment": {"p": 0}, "sample": {"images": 0}}
    lines = ["# written by benchmarks/reproduce_small.py: the study's layer over loracli/configs/edm-cifar10.toml"]
    for name, values in tables.items():
        lines += [f"[{name}]"] + [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def train_run(arm: str, seed: int, config: Path, data: Path, run_dir: Path) -> None:
    """`loracli train edm` for one arm and seed (resumed if it was interrupted)."""
    cond, only_lora = ARMS[arm]
    command = [sys.executable, "-m", "loracli", "train", "edm", "--config", str(config), "--cond", cond,
               "--data", str(data), "--seed", str(seed), "--outdir", str(run_dir)]
    if only_lora:
        command.append("--only-lora")
    if (run_dir / "state.safetensors").exists():
        command = [sys.executable, "-m", "loracli", "train", "edm", "--resume", "--outdir", str(run_dir)]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True)


def finished(run_dir: Path, steps: int) -> bool:
    ckpt = run_dir / "ckpt.safetensors"
    return ckpt.exists() and loracli.load(ckpt).checkpoint["step"] >= steps


def speed(run_dir: Path) -> dict[str, float]:
    """Median training img/s of the run's progress windows (the first one, with warm-up, left out), and the
    wall time from the start of training (config.json is written then) to its last progress line."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["img_per_s"] for r in rows[1:]] or [r["img_per_s"] for r in rows]
    return {"img_per_s": float(np.median(rates)), "train_loss_last": float(rows[-1]["loss"]),
            "train_wall_s": float(rows[-1]["time"] - (run_dir / "config.json").stat().st_mtime)}


def step_times(arms: list[str], config: Path, data: Path, out: Path, repeats: int) -> dict[str, float]:
    """Median seconds per training step of each arm, measured in this process by loracli's own Trainer with the
    arms alternating step by step, so that a busy shared machine slows every arm alike."""
    from loracli.train.loop import Trainer, make_loader
    from loracli.train.recipe import load_recipe, resolve_duration

    trainers, batches = {}, {}
    for arm in arms:
        cond, only_lora = ARMS[arm]
        recipe = resolve_duration(load_recipe("edm", None, config, {"cond": cond, "only_lora": only_lora or None,
                                                                     "data": str(data)}))
        trainers[arm] = Trainer(recipe, out / "timing" / arm)
        batches[arm] = make_loader(trainers[arm].dataset, recipe, trainers[arm].process, trainers[arm].micro_batch, 0)
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    try:
        for k in range(repeats + 3):  # the first three steps warm up (torch.compile on a GPU)
            for arm in arms:
                start = time.perf_counter()
                trainers[arm].train_step(batches[arm])
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                if k >= 3:
                    times[arm].append(time.perf_counter() - start)
    finally:
        for trainer in trainers.values():
            trainer.close()
    return {arm: float(np.median(v)) for arm, v in times.items()}


# -- evaluation ----------------------------------------------------------------------------------------------------
def evaluate_run(run_dir: Path, net: Any, data: dict[str, Any], setting: dict[str, Any], classifier: Any,
                 reference: tuple[np.ndarray, np.ndarray], detector: Any, fid_ref: Any, fid_num: int,
                 device: str) -> dict[str, Any]:
    """Held-out curve over the snapshots, final held-out loss, CFD (and FID) of the run's final network ``net``;
    cached in the run folder."""
    cache = run_dir / "evaluation.json"
    record = json.loads(cache.read_text()) if cache.exists() else {}
    test_x = torch.from_numpy(data["test_x"])
    curve = record.get("curve", {})
    for snap in sorted(run_dir.glob("snapshot-*.safetensors")):
        step = str(int(snap.stem.split("-")[1]))
        if step not in curve:
            net = loracli.load(snap).to(device)
            curve[step] = held_out_loss(net, test_x[:setting["curve_images"]], seed=HELD_OUT_SEED).mean
    record["curve"] = curve
    net = net.to(device)
    if "held_out" not in record:
        result = held_out_loss(net, test_x[:setting["eval_images"]], seed=HELD_OUT_SEED)
        record["held_out"] = {"mean": result.mean, "per_sigma": result.per_level.tolist()}
    if "cfd" not in record:
        images = loracli.sample(net, range(setting["cfd_num"]), steps=SAMPLE_STEPS, batch=256, device=device)
        record["cfd"] = small_classifier.cfd(small_classifier.features(classifier, images), reference)
        record["preview"] = images[:10].numpy().tolist()
    if detector is not None and "fid" not in record:
        from loracli.metrics.fid import score_checkpoint

        fid = score_checkpoint(net, run_dir / "ckpt.safetensors", fid_ref, detector, range(fid_num), batch=256)
        record["fid"] = {"fid": fid["fid"], "n": fid["n"], "mode": fid["mode"], "detector": fid["detector"]}
    write_text(cache, json.dumps(record) + "\n")
    return record


def get_classifier(data: dict[str, Any], setting: dict[str, Any], out: Path, device: str) -> tuple[Any, dict]:
    """The CFD feature network (trained once, cached) and its test accuracy and reference statistics."""
    path = out / "classifier.pt"
    model = small_classifier.SmallClassifier(int(data["train_y"].max()) + 1).to(device)
    if path.exists():
        model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        model.eval()
    else:
        print(f"training the CFD classifier ({setting['classifier_epochs']} epochs) ...", flush=True)
        start = time.time()
        model = small_classifier.train_classifier(data["train_x"], data["train_y"], setting["classifier_epochs"],
                                                  device=device)
        print(f"  {time.time() - start:.0f} s", flush=True)
        with atomic_path(path) as tmp:
            torch.save(model.state_dict(), tmp)
    ref_features = small_classifier.features(model, data["train_x"])
    reference = (ref_features.mean(0), np.cov(ref_features, rowvar=False))
    floor_n = min(setting["cfd_num"], len(data["test_x"]))
    info = {"test_accuracy": small_classifier.accuracy(model, data["test_x"], data["test_y"]),
            "features": small_classifier.FEATURES,
            "real_floor": {"n": floor_n, "cfd": small_classifier.cfd(
                small_classifier.features(model, data["test_x"][:floor_n]), reference)}}
    return model, {**info, "reference": reference}


# -- summary and figures ---------------------------------------------------------------------------------------
def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per arm: mean and spread (half the range over seeds) of each metric."""
    out: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        rows = [r for r in runs if r["arm"] == arm and "held_out" in r]
        if not rows:
            continue
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in rows], "params": rows[0]["params"],
                                 "adapter_params": rows[0]["adapter_params"]}
        metrics = {"held_out": [r["held_out"]["mean"] for r in rows], "cfd": [r["cfd"] for r in rows],
                   "img_per_s": [r["img_per_s"] for r in rows], "step_s": [r["step_s"] for r in rows]}
        if all("fid" in r for r in rows):
            metrics["fid"] = [r["fid"]["fid"] for r in rows]
        for key, values in metrics.items():
            values = np.asarray(values, dtype=np.float64)
            entry[key] = {"mean": float(values.mean()), "spread": float((values.max() - values.min()) / 2),
                          "values": values.tolist()}
        out[arm] = entry
    if "baseline" in out:  # paired by seed: the same data order and noise draws as the baseline's run
        base = dict(zip(out["baseline"]["seeds"], out["baseline"]["held_out"]["values"]))
        for entry in out.values():
            entry["held_out_vs_baseline"] = [v / base[s] - 1 for s, v in zip(entry["seeds"], entry["held_out"]["values"])
                                             if s in base]
    return out


COLOURS = {"baseline": "tab:blue", "with-lora": "tab:orange", "only-lora": "tab:green", "no-cond": "tab:red"}


def plot_curves(runs: list[dict[str, Any]], summary: dict, setting: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for arm in summary:
        mine = [r for r in runs if r["arm"] == arm]
        for k, r in enumerate(mine):
            steps = sorted(int(s) for s in r["curve"])
            ax.plot(steps, [r["curve"][str(s)] for s in steps], "o-", color=COLOURS[arm], alpha=0.9 if k == 0 else 0.45,
                    ms=3, label=arm if k == 0 else None)
        base = np.mean([r["held_out"]["per_sigma"] for r in runs if r["arm"] == "baseline"], axis=0) \
            if "baseline" in summary else None
        if base is not None:
            mean = np.mean([r["held_out"]["per_sigma"] for r in mine], axis=0)
            bx.plot(sigma_grid(), mean / base, "o-", color=COLOURS[arm], ms=3, label=arm)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"held-out EDM loss (mean over 16 σ, {setting['curve_images']} test images)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    ax.set_title("held-out loss of the EMA network (faint: second seed)")
    bx.set_xscale("log")
    bx.axhline(1, color="grey", lw=0.8)
    bx.set_xlabel("σ")
    bx.set_ylabel("final held-out loss / baseline's (mean over seeds)")
    bx.set_title("where the arms differ (final step)")
    bx.grid(alpha=0.3, which="both")
    bx.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def plot_samples(runs: list[dict[str, Any]], summary: dict, path: Path) -> Path:
    """One row per arm (first seed's run): its first 10 Heun samples, from the same sampling seeds in every row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [np.asarray(next(r for r in runs if r["arm"] == arm)["preview"], dtype=np.uint8) for arm in summary]
    images = np.stack(rows)  # [arms, n, C, H, W]
    arms, n, _, h, w = images.shape
    grid = make_grid(images.reshape(arms * n, *images.shape[2:]), columns=n)
    fig, ax = plt.subplots(figsize=(0.75 * n + 1.2, 0.75 * arms + 0.6))
    ax.imshow(grid, interpolation="nearest")
    ax.set_xticks([(k + 0.5) * w - 0.5 for k in range(n)], [str(k) for k in range(n)])
    ax.set_yticks([(k + 0.5) * h - 0.5 for k in range(arms)], list(summary))
    ax.set_xlabel("sampling seed (EDM Heun, 18 steps)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def markdown_table(summary: dict, classifier: dict, batch: int) -> str:
    has_fid = all("fid" in s for s in summary.values())
    head = ("| arm | held-out loss | vs baseline, per seed | CFD |" + (" FID |" if has_fid else "")
            + " s/step (img/s), interleaved | img/s in its run | parameters | adapter parameters |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for arm, s in summary.items():
        paired = ", ".join(f"{100 * d:+.2f} %" for d in s.get("held_out_vs_baseline", []))
        cells = [arm, f"{s['held_out']['mean']:.4f} ± {s['held_out']['spread']:.4f}", paired or "-",
                 f"{s['cfd']['mean']:.3f} ± {s['cfd']['spread']:.3f}"]
        if has_fid:
            cells.append(f"{s['fid']['mean']:.2f} ± {s['fid']['spread']:.2f}")
        step = s["step_s"]["mean"]
        cells += [f"{step:.3f} ({batch / step:.0f})", f"{s['img_per_s']['mean']:.0f}", f"{s['params']:,}",
                  f"{s['adapter_params']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nCFD floor (real test images, n={classifier['real_floor']['n']}): "
                 f"{classifier['real_floor']['cfd']:.3f}; classifier test accuracy {classifier['test_accuracy']:.3f}.")
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------------------------------
def main() -> None:
    args = parse_args()
    setting = dict(PROFILES[args.profile])
    for key in ("steps", "batch", "eval_images", "curve_images", "cfd_num", "device"):
        if getattr(args, key) is not None:
            setting[key] = getattr(args, key)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = (args.out or Path("runs") / f"reproduce-{args.profile}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    if setting["device"] == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

    data = prepare_data(args, setting, out)
    config = out / "config.toml"
    write_text(config, recipe_toml(setting))
    for seed in seeds:  # seed by seed, so that an interrupted study still has complete sets of arms
        for arm in arms:
            run_dir = out / "runs" / f"{arm}-s{seed}"
            if not finished(run_dir, setting["steps"]):
                train_run(arm, seed, config, data["train_zip"], run_dir)
    if args.train_only:
        return

    device = setting["device"]
    classifier, classifier_info = get_classifier(data, setting, out, device)
    detector = fid_ref = None
    if args.inception is not None:
        from loracli.metrics.detectors import load_detector
        from loracli.metrics.reference import resolve

        detector = load_detector("clean", args.inception, device)
        fid_ref = resolve(str(data["train_zip"]), detector, batch=256)
    timing_file = out / "step-times.json"
    timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    if set(arms) - set(timing):
        print(f"timing training steps ({args.timing_repeats} per arm, arms alternating) ...", flush=True)
        timing = step_times(arms, config, data["train_zip"], out, args.timing_repeats)
        write_text(timing_file, json.dumps(timing) + "\n")
    runs = []
    for seed in seeds:
        for arm in arms:
            run_dir = out / "runs" / f"{arm}-s{seed}"
            print(f"evaluating {run_dir.name} ...", flush=True)
            start = time.time()
            net = loracli.load(run_dir / "ckpt.safetensors")
            record = evaluate_run(run_dir, net, data, setting, classifier, classifier_info["reference"], detector,
                                  fid_ref, args.fid_num, device)
            runs.append({"arm": arm, "seed": seed, "run": str(run_dir), "step": net.checkpoint["step"],
                         "params": sum(p.numel() for p in net.parameters()),
                         "adapter_params": sum(p.numel() for p in net.condition_parameters()),
                         "step_s": timing[arm], **speed(run_dir), **record})
            print(f"  {time.time() - start:.0f} s: held-out {record['held_out']['mean']:.4f}, CFD {record['cfd']:.3f}",
                  flush=True)
    summary = summarise(runs)
    classifier_info.pop("reference")
    results = {"profile": args.profile, "setting": setting, "command": " ".join(sys.argv),
               "sigma_grid": sigma_grid().tolist(), "held_out_seed": HELD_OUT_SEED, "sampler": {
                   "name": "heun", "steps": SAMPLE_STEPS, "nfe": 2 * SAMPLE_STEPS - 1},
               "classifier": classifier_info, "summary": summary,
               "runs": [{k: v for k, v in r.items() if k != "preview"} for r in runs],
               "torch": torch.__version__, "loracli": loracli.__version__,
               "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    figures = [out] + ([args.figures] if args.figures else [])
    for folder in figures:
        folder.mkdir(parents=True, exist_ok=True)
        plot_curves(runs, summary, setting, folder / f"reproduction-{args.profile}-loss.png")
        plot_samples(runs, summary, folder / f"reproduction-{args.profile}-samples.png")
    table = markdown_table(summary, classifier_info, setting["batch"])
    write_text(out / "results.md", table + "\n")
    print(table)
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:  # a missing file or a wrong checkpoint: one sentence, exit 1
        raise SystemExit(f"error: {exc}") from None
