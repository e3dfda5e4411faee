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
(4) training img/s and parameter counts. Per arm: the mean over seeds (default 3) and, against the baseline
run of the same seed, the mean and 95 % t-interval of the paired differences. Output: results.json, results.md
and figures in --out (and --figures).

    python benchmarks/reproduce_small.py --profile smoke --train cifar10-jpeg-train.zip --test cifar10-jpeg-test.zip
    python benchmarks/reproduce_small.py --profile cpu --train cifar10-jpeg-train.zip --test cifar10-jpeg-test.zip
    python benchmarks/reproduce_small.py --profile gpu --train ... --test ... --inception inception-2015-12-05.pt

Runs, evaluations and the classifier are cached in --out: rerunning continues an interrupted study (a run
cut short resumes with `loracli train --resume`), and `--seeds 0,1,2,3` adds a seed to a finished one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from studylib import (HELD_OUT_SEED, SAMPLE_STEPS, SMOKE, add_study_args, draw_paired, draw_per_sigma,  # noqa: E402
                      evaluate_run, fid_setup, figure_folders, finished, format_interval, get_classifier,
                      interleaved_step_times, prepare_data, publish, recipe_toml, speed, summarise_arms, train)

import loracli  # noqa: E402
from loracli.diffusion.evaluate import sigma_grid  # noqa: E402
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
    "smoke": {**SMOKE, "steps": 20},  # minutes on a CPU: the pipeline end to end, numbers meaningless
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_study_args(p)
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--out", type=Path, default=None, help="study folder (default runs/reproduce-<profile>)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma list of {', '.join(ARMS)}")
    p.add_argument("--seeds", default="0,1,2", help="training seeds (each arm once per seed; >= 3 for intervals)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per run (profile default)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--timing-repeats", type=int, default=20, help="timed training steps per arm (interleaved)")
    p.add_argument("--train-only", action="store_true", help="train the runs, skip evaluation")
    return p.parse_args()


# -- training -----------------------------------------------------------------------------------------------------
def train_run(arm: str, seed: int, config: Path, data: Path, run_dir: Path) -> None:
    """`loracli train edm` for one arm and seed (resumed if it was interrupted)."""
    cond, only_lora = ARMS[arm]
    train(["--config", str(config), "--cond", cond, "--data", str(data), "--seed", str(seed)]
          + (["--only-lora"] if only_lora else []), run_dir)


def step_times(arms: list[str], config: Path, data: Path, out: Path, repeats: int) -> dict[str, float]:
    """Median seconds per training step of each arm, the arms alternating step by step (studylib)."""
    overrides = {arm: {"cond": ARMS[arm][0], "only_lora": ARMS[arm][1] or None, "data": str(data)} for arm in arms}
    return interleaved_step_times("edm", overrides, config, out, repeats, warmup=3)


# -- summary and figures ---------------------------------------------------------------------------------------
def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per arm: mean and spread of each metric over seeds, and differences paired with the baseline's seeds."""
    fields = {"held_out": lambda r: r["held_out"]["mean"], "cfd": lambda r: r["cfd"],
              "img_per_s": lambda r: r["img_per_s"], "step_s": lambda r: r["step_s"]}
    return summarise_arms(runs, list(ARMS), "baseline", fields)


COLOURS = {"baseline": "tab:blue", "with-lora": "tab:orange", "only-lora": "tab:green", "no-cond": "tab:red"}
MARKERS = {"baseline": "o", "with-lora": "s", "only-lora": "^", "no-cond": "v"}


def plot_curves(runs: list[dict[str, Any]], summary: dict, setting: dict[str, Any], path: Path) -> Path:
    """Left: held-out loss of each snapshot (every run); middle: the final loss per σ against the baseline run of
    the same seed (mean and 95 % band of the paired differences); right: the same in total (points: seeds,
    diamond and bar: mean and 95 % interval). Linear y axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(16, 4.4), gridspec_kw={"width_ratios": [1.2, 1.2, 0.8]})
    for arm in summary:
        for k, r in enumerate(run for run in runs if run["arm"] == arm):
            steps = sorted(int(s) for s in r["curve"])
            ax.plot(steps, [r["curve"][str(s)] for s in steps], marker=MARKERS[arm], color=COLOURS[arm], ms=3,
                    alpha=0.9 if k == 0 else 0.4, label=arm if k == 0 else None)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"held-out EDM loss (mean over 16 σ, {setting['curve_images']} test images)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("EMA network at each snapshot (faint: the other seeds)")
    arms = [a for a in summary if a != "baseline" and "vs_baseline" in summary[a]]
    draw_per_sigma(bx, summary, arms, "vs_baseline", sigma_grid(), COLOURS, MARKERS)
    bx.set_ylabel("final held-out loss vs baseline (%)")
    bx.set_title("per σ, paired by seed: mean and 95 % band")
    draw_paired(cx, summary, arms, "vs_baseline", "held_out", 100, COLOURS, MARKERS)
    cx.set_ylabel("final held-out loss vs baseline (%)")
    cx.set_title("total: seeds and mean with 95 % CI")
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
    head = ("| arm | held-out loss | vs baseline: mean [95 % CI] | CFD | CFD vs baseline |"
            + (" FID |" if has_fid else "")
            + " s/step (img/s), interleaved | img/s in its run | parameters | adapter parameters |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for arm, s in summary.items():
        paired = s.get("vs_baseline", {}) if arm != "baseline" else {}
        cells = [arm, f"{s['held_out']['mean']:.4f} ± {s['held_out']['spread']:.4f}",
                 format_interval(paired["held_out"], 100, unit=" %") if "held_out" in paired else "–",
                 f"{s['cfd']['mean']:.3f} ± {s['cfd']['spread']:.3f}",
                 format_interval(paired["cfd"], digits=3) if "cfd" in paired else "–"]
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
    write_text(config, recipe_toml(setting, setting["steps"], "reproduce_small.py"))
    for seed in seeds:  # seed by seed, so that an interrupted study still has complete sets of arms
        for arm in arms:
            run_dir = out / "runs" / f"{arm}-s{seed}"
            if not finished(run_dir, setting["steps"]):
                train_run(arm, seed, config, data["train_zip"], run_dir)
    if args.train_only:
        return

    device = setting["device"]
    classifier, classifier_info = get_classifier(data, setting, out, device)
    detector, fid_ref = fid_setup(args, data, device)
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
    publish(out, results, markdown_table(summary, classifier_info, setting["batch"]))
    for folder in figure_folders(out, args.figures):
        plot_curves(runs, summary, setting, folder / f"reproduction-{args.profile}-loss.png")
        plot_samples(runs, summary, folder / f"reproduction-{args.profile}-samples.png")


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:  # a missing file or a wrong checkpoint: one sentence, exit 1
        raise SystemExit(f"error: {exc}") from None
