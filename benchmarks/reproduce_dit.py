"""Can LoRA on attention replace adaLN-Zero in a DiT? A small, rerunnable study (issue 17).

Four arms of loracli's own small DiT (`dit`, patch 2, pixel space, ddpm family), class-conditional, trained by
`loracli train dit` (subprocesses of the real CLI) with the same recipe, steps, seed and data order per seed:

    adaln        --cond none                                 adaLN-Zero from c = t_emb + y_emb (DiT as published)
    adaln-lora   --cond time-lora+class-lora                 adaLN-Zero and TimeLoRA + ClassLoRA on qkv and proj
    only-lora    --cond time-lora+class-lora --only-lora     no adaLN, no embedders: t and y reach the transformer
                                                             only through the attention adapters
    no-cond      --cond none --only-lora                     no condition at all (control)

on two data sets: the built-in shapes at 16x16 (train: seed 0; held out: seed 1) and CIFAR-10 box-filtered to
16x16 (the EDM-layout JPEG zips, paths passed with --cifar-train/--cifar-test).

Metrics per run: held-out ε-MSE at 16 timesteps with fixed noise and the test images' labels
(loracli.diffusion.evaluate; per snapshot as a curve, and per timestep at the end); class-conditional samples
(DDIM, image k of class k mod 10) scored by a small CNN trained here on the same training images
(benchmarks/small_classifier.py): the classifier Fréchet distance (CFD, NOT an FID) and the classifier's
accuracy on the samples (does the class get through?); parameters, adapter parameters, and seconds per training
step measured with the arms interleaved. Per arm against adaln: paired (same seed) differences with 95 %
Student-t intervals. Output: results.json, results.md and figures in --out (and --figures).

    python benchmarks/reproduce_dit.py --profile smoke --cifar-train cifar10-jpeg-train.zip \
        --cifar-test cifar10-jpeg-test.zip                                                  # pipeline check
    OMP_NUM_THREADS=1 python benchmarks/reproduce_dit.py --profile cpu --cifar-train ... --cifar-test ...  # 3 seeds
    python benchmarks/reproduce_dit.py --profile gpu --cifar-train ... --cifar-test ...    # DiT-S/2 size, 1 GPU

Everything is cached in --out: rerunning continues an interrupted study (a run cut short resumes with
`loracli train --resume`), and `--seeds 0,1,2,3` adds a seed to a finished one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import studylib as shared  # noqa: E402  (data, classifier, intervals, run bookkeeping of the EDM studies)
import small_classifier  # noqa: E402

import loracli  # noqa: E402
from loracli.data import BuiltinShapes  # noqa: E402
from loracli.diffusion.evaluate import held_out_loss  # noqa: E402
from loracli.errors import UserError  # noqa: E402
from loracli.images import make_grid  # noqa: E402
from loracli.io.atomic import atomic_path, write_text  # noqa: E402

ARMS = {  # name: (--cond, --only-lora)
    "adaln": ("none", False),
    "adaln-lora": ("time-lora+class-lora", False),
    "only-lora": ("time-lora+class-lora", True),
    "no-cond": ("none", True),
}
REFERENCE_ARM = "adaln"
DATASETS = ("builtin", "cifar")
CLASSES = 10
RESOLUTION = 16
PROFILES: dict[str, dict[str, Any]] = {
    # Proves the pipeline end to end and measures nothing (25 minutes on a busy shared 2-core CPU, mostly the
    # start-up of the 16 `loracli train` subprocesses).
    "smoke": {"batch": 16, "steps": 20, "lr": 1e-3, "lr_rampup_kimg": 0.1, "ema_halflife_kimg": 0.1,
              "network": {"hidden_size": 32, "depth": 2, "num_heads": 2}, "snapshots": 2, "curve_images": 64,
              "eval_images": 128, "cfd_num": 40, "classifier_epochs": 1, "classifier_images": 2000,
              "sampler": "ddim", "sample_steps": 10, "seeds": "0,1", "device": "cpu"},
    # About 1 h 50 min on one CPU core with OMP_NUM_THREADS=1 (24 runs: 2 data sets x 4 arms x 3 seeds).
    "cpu": {"batch": 64, "steps": 750, "lr": 1e-3, "lr_rampup_kimg": 2, "ema_halflife_kimg": 2,
            "network": {"hidden_size": 64, "depth": 4, "num_heads": 4}, "snapshots": 3, "curve_images": 128,
            "eval_images": 1000, "cfd_num": 500, "classifier_epochs": 3, "classifier_images": 50000,
            "sampler": "ddim", "sample_steps": 50, "seeds": "0,1,2", "device": "cpu"},
    # DiT-S/2's transformer (hidden 384, 12 blocks, 6 heads) at 16x16 on one GPU.
    "gpu": {"batch": 256, "steps": 20000, "lr": 1e-4, "lr_rampup_kimg": 100, "ema_halflife_kimg": 250,
            "network": {"hidden_size": 384, "depth": 12, "num_heads": 6}, "snapshots": 10, "curve_images": 2000,
            "eval_images": 10000, "cfd_num": 10000, "classifier_epochs": 15, "classifier_images": 50000,
            "sampler": "ddim", "sample_steps": 50, "seeds": "0,1,2,3,4", "device": "cuda"},
}
HELD_OUT_SEED = 1234  # the fixed noise of the held-out loss


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--cifar-train", type=Path, default=None, help="CIFAR-10 training images: EDM dataset zip")
    p.add_argument("--cifar-test", type=Path, default=None, help="CIFAR-10 held-out images: EDM dataset zip")
    p.add_argument("--datasets", default=",".join(DATASETS), help=f"comma list of {', '.join(DATASETS)}")
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--out", type=Path, default=None, help="study folder (default runs/reproduce-dit-<profile>)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma list of {', '.join(ARMS)}")
    p.add_argument("--seeds", default=None, help="training seeds (each arm once per seed; profile default)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per run (profile default)")
    p.add_argument("--device", default=None, help="cpu or cuda (profile default)")
    p.add_argument("--figures", type=Path, default=None, help="also write the figures here (e.g. docs/figures)")
    p.add_argument("--timing-repeats", type=int, default=10, help="timed training steps per arm (interleaved)")
    p.add_argument("--train-only", action="store_true", help="train the runs, skip evaluation")
    return p.parse_args()


# -- data -------------------------------------------------------------------------------------------------------
def builtin_arrays(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    data = BuiltinShapes(RESOLUTION, seed=seed)
    items = [data[i] for i in range(count)]
    return np.stack([x for x, _ in items]), np.asarray([y for _, y in items], dtype=np.int64)


def prepare(name: str, args: argparse.Namespace, setting: dict[str, Any], out: Path) -> dict[str, Any]:
    """Train and test arrays at 16x16 and what `loracli train` reads (``train_zip``; None: the built-in data)."""
    if name == "builtin":  # `loracli train` renders the same seed-0 images itself
        train_x, train_y = builtin_arrays(setting["classifier_images"], seed=0)
        test_x, test_y = builtin_arrays(setting["eval_images"], seed=1)
        return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y, "train_zip": None}
    if args.cifar_train is None or args.cifar_test is None:
        raise SystemExit("the cifar data set needs --cifar-train and --cifar-test (EDM-layout zips), "
                         "or leave it out with --datasets builtin")
    for path in (args.cifar_train, args.cifar_test):
        if not path.is_file():
            raise SystemExit(f"no data set at {path}")
    paths = argparse.Namespace(train=args.cifar_train, test=args.cifar_test)
    data = shared.prepare_data(paths, {"resolution": RESOLUTION}, out)
    limit = setting["classifier_images"]
    return {**data, "train_x": data["train_x"][:limit], "train_y": data["train_y"][:limit]}


# -- training -----------------------------------------------------------------------------------------------------
def recipe_toml(setting: dict[str, Any]) -> str:
    """The study's --config layer on top of loracli/configs/dit-cifar16.toml."""
    steps = setting["steps"]
    network = {"img_resolution": RESOLUTION, **setting["network"]}
    train = {"batch": setting["batch"], "steps": steps, "lr": setting["lr"],
             "lr_rampup_kimg": setting["lr_rampup_kimg"], "ema_halflife_kimg": setting["ema_halflife_kimg"],
             "ema_rampup_ratio": 0.05, "snapshot_every": max(1, steps // setting["snapshots"]),
             "log_every": max(1, min(50, steps // 20)), "device": setting["device"]}
    tables = {"network": network, "train": train, "sample": {"images": 0}}
    lines = ["# written by benchmarks/reproduce_dit.py: the study's layer over loracli/configs/dit-cifar16.toml"]
    for name, values in tables.items():
        lines += [f"[{name}]"] + [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def arm_flags(arm: str) -> list[str]:
    cond, only_lora = ARMS[arm]
    return ["--cond", cond, "--label-dim", str(CLASSES)] + (["--only-lora"] if only_lora else [])


def train_run(arm: str, seed: int, config: Path, data: Path | None, run_dir: Path) -> None:
    """`loracli train dit` for one arm and seed (resumed if it was interrupted)."""
    command = [sys.executable, "-m", "loracli", "train", "dit", "--config", str(config), *arm_flags(arm),
               "--seed", str(seed), "--outdir", str(run_dir)] + (["--data", str(data)] if data else [])
    if (run_dir / "state.safetensors").exists():
        command = [sys.executable, "-m", "loracli", "train", "dit", "--resume", "--outdir", str(run_dir)]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True)


def step_times(arms: list[str], config: Path, out: Path, repeats: int) -> dict[str, float]:
    """Median seconds per training step of each arm (built-in data), the arms alternating step by step."""
    overrides = {arm: {"cond": ARMS[arm][0], "only_lora": ARMS[arm][1] or None, "label_dim": CLASSES} for arm in arms}
    return shared.interleaved_step_times("dit", overrides, config, out, repeats, warmup=2)


# -- evaluation ----------------------------------------------------------------------------------------------------
def evaluate_run(run_dir: Path, data: dict[str, Any], setting: dict[str, Any], classifier: Any,
                 reference: tuple[np.ndarray, np.ndarray], device: str) -> dict[str, Any]:
    """Held-out curve over the snapshots, final held-out loss per timestep, CFD and class accuracy of the run's
    class-conditional samples; cached in the run folder."""
    cache = run_dir / "evaluation.json"
    record = json.loads(cache.read_text()) if cache.exists() else {}
    test_x, test_y = torch.from_numpy(data["test_x"]), torch.from_numpy(data["test_y"])
    curve = record.get("curve", {})
    for snap in sorted(run_dir.glob("snapshot-*.safetensors")):
        step = str(int(snap.stem.split("-")[1]))
        if step not in curve:
            n = setting["curve_images"]
            curve[step] = held_out_loss(loracli.load(snap).to(device), test_x[:n], test_y[:n], seed=HELD_OUT_SEED).mean
    record["curve"] = curve
    net = loracli.load(run_dir / "ckpt.safetensors").to(device)
    if "held_out" not in record:
        n = setting["eval_images"]
        result = held_out_loss(net, test_x[:n], test_y[:n], seed=HELD_OUT_SEED)
        record["held_out"] = {"mean": result.mean, "per_timestep": result.per_level.tolist(),
                              "timesteps": result.levels.tolist()}
    if "cfd" not in record:
        labels = np.arange(setting["cfd_num"]) % CLASSES  # image k: seed k, class k mod 10
        images = loracli.sample(net, range(setting["cfd_num"]), class_labels=labels.tolist(),
                                sampler=setting["sampler"], steps=setting["sample_steps"], batch=250, device=device)
        record["cfd"] = small_classifier.cfd(small_classifier.features(classifier, images), reference)
        record["class_accuracy"] = small_classifier.accuracy(classifier, images.numpy(), labels)
        record["preview"] = images[:CLASSES].numpy().tolist()
    write_text(cache, json.dumps(record) + "\n")
    return {**record, "step": net.checkpoint["step"], "params": sum(p.numel() for p in net.parameters()),
            "adapter_params": sum(p.numel() for p in net.condition_parameters())}


# -- summary and figures ---------------------------------------------------------------------------------------
METRICS = {"held_out": lambda r: r["held_out"]["mean"], "cfd": lambda r: r["cfd"],
           "class_accuracy": lambda r: r["class_accuracy"]}


def summarise(runs: list[dict[str, Any]], arms: list[str]) -> dict[str, dict[str, Any]]:
    """Per arm: mean and values of each metric over seeds (class accuracy also with its 95 % interval); against
    adaln, paired differences with 95 % intervals (held-out loss relative, in total and per timestep; CFD and
    accuracy absolute). Everything the table and the figure show is computed here."""
    out: dict[str, dict[str, Any]] = {}
    reference = {r["seed"]: r for r in runs if r["arm"] == REFERENCE_ARM}
    for arm in arms:
        rows = [r for r in runs if r["arm"] == arm]
        if not rows:
            continue
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in rows], "params": rows[0]["params"],
                                 "adapter_params": rows[0]["adapter_params"], "step_s": rows[0]["step_s"]}
        paired = [r for r in rows if r["seed"] in reference]
        for key, get in METRICS.items():
            values = [get(r) for r in rows]
            entry[key] = {"mean": float(np.mean(values)), "values": values}
            if arm != REFERENCE_ARM and paired:
                base = [get(reference[r["seed"]]) for r in paired]
                diffs = [get(r) / b - 1 if key == "held_out" else get(r) - b for r, b in zip(paired, base)]
                entry[f"{key}_vs_{REFERENCE_ARM}"] = shared.paired_interval(diffs)
        if len(rows) > 1:  # the accuracy's own interval over seeds (the figure's error bar)
            entry["class_accuracy"]["interval"] = shared.paired_interval(entry["class_accuracy"]["values"])
        if arm != REFERENCE_ARM and paired:  # per timestep, relative, as the held-out total
            ratios = [np.asarray(r["held_out"]["per_timestep"]) / np.asarray(reference[r["seed"]]["held_out"]
                                                                             ["per_timestep"]) - 1 for r in paired]
            entry[f"per_timestep_vs_{REFERENCE_ARM}"] = [shared.paired_interval([float(x[k]) for x in ratios])
                                                         for k in range(len(ratios[0]))]
        out[arm] = entry
    return out


def interval_text(entry: dict[str, Any] | None, scale: float, unit: str, digits: int) -> str:
    if entry is None:
        return "-"
    text = f"{scale * entry['mean']:+.{digits}f}{unit}"
    if "low" in entry:
        text += f" [{scale * entry['low']:+.{digits}f}, {scale * entry['high']:+.{digits}f}]"
    return text


def markdown_table(summary: dict[str, dict[str, Any]], classifier: dict[str, Any], batch: int) -> str:
    head = ("| arm | held-out ε-MSE | vs adaln | CFD | vs adaln | class accuracy of samples | vs adaln "
            "| s/step | parameters | adapter parameters |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for arm, s in summary.items():
        cells = [arm, f"{s['held_out']['mean']:.4f}", interval_text(s.get("held_out_vs_adaln"), 100, " %", 2),
                 f"{s['cfd']['mean']:.3f}", interval_text(s.get("cfd_vs_adaln"), 1, "", 3),
                 f"{s['class_accuracy']['mean']:.3f}", interval_text(s.get("class_accuracy_vs_adaln"), 1, "", 3),
                 f"{s['step_s']:.3f}", f"{s['params']:,}", f"{s['adapter_params']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nIntervals: mean of the paired (same seed) differences to adaln [95 % Student-t]. "
                 f"Batch {batch}. Classifier test accuracy {classifier['test_accuracy']:.3f}; CFD floor (real "
                 f"test images, n={classifier['real_floor']['n']}) {classifier['real_floor']['cfd']:.3f}.")
    return "\n".join(lines)


def plot_study(results: dict[str, Any], path: Path) -> Path:
    """One row per data set. Left: held-out ε-MSE per timestep against adaln's run of the same seed (mean of the
    paired differences, band: 95 % interval); middle: the classifier's accuracy on each run's samples (points:
    seeds, diamond and bar: mean and 95 % interval), against chance and the classifier's accuracy on real test
    images; right: the samples of each arm's first-seed run for classes 0-9. Linear y axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["datasets"])
    fig, axes = plt.subplots(len(names), 3, figsize=(17, 3.9 * len(names)), squeeze=False,
                             gridspec_kw={"width_ratios": [1.2, 0.8, 1.3]})
    colours = {"adaln": "tab:blue", "adaln-lora": "tab:orange", "only-lora": "tab:green", "no-cond": "tab:red"}
    markers = {"adaln": "o", "adaln-lora": "s", "only-lora": "^", "no-cond": "v"}
    for (lx, ax, sx), name in zip(axes, names):
        entry = results["datasets"][name]
        runs, arms = entry["runs"], list(entry["summary"])
        timesteps = runs[0]["held_out"]["timesteps"]
        for arm in arms:
            per_t = entry["summary"][arm].get(f"per_timestep_vs_{REFERENCE_ARM}")
            if per_t is None:
                continue
            lx.plot(timesteps, [100 * e["mean"] for e in per_t], marker=markers[arm], ms=4, color=colours[arm],
                    label=arm)
            if all("low" in e for e in per_t):
                lx.fill_between(timesteps, [100 * e["low"] for e in per_t], [100 * e["high"] for e in per_t],
                                color=colours[arm], alpha=0.15)
        lx.axhline(0, color=colours[REFERENCE_ARM], lw=1, label=f"{REFERENCE_ARM} (reference)")
        lx.set_xlabel("timestep t (0: least noise)")
        lx.set_ylabel("held-out ε-MSE vs adaln (%)")
        lx.set_title(f"{name}: paired by seed, mean and 95 % interval")
        lx.grid(alpha=0.3)
        lx.legend(fontsize=8)
        for k, arm in enumerate(arms):
            accuracy = entry["summary"][arm]["class_accuracy"]
            ax.scatter([k] * len(accuracy["values"]), accuracy["values"], color=colours[arm], marker=markers[arm],
                       alpha=0.6, s=22)
            if "interval" in accuracy:
                interval = accuracy["interval"]
                ax.errorbar([k + 0.18], [interval["mean"]], fmt="D", color=colours[arm], capsize=4,
                            yerr=[[interval["mean"] - interval["low"]], [interval["high"] - interval["mean"]]])
        ax.axhline(1 / CLASSES, color="grey", ls=":", lw=1, label="chance")
        ax.axhline(entry["classifier"]["test_accuracy"], color="grey", ls="--", lw=1, label="real test images")
        ax.set_xticks(range(len(arms)), arms, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("classifier accuracy on samples")
        ax.set_title(f"{name}: does the class get through?")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="upper right")
        previews = np.stack([np.asarray(next(r for r in runs if r["arm"] == arm)["preview"], dtype=np.uint8)
                             for arm in arms])
        count, _, h, w = previews.shape[1:]
        sx.imshow(make_grid(previews.reshape(-1, *previews.shape[2:]), columns=count), interpolation="nearest")
        sx.set_xticks([(k + 0.5) * w - 0.5 for k in range(count)], [str(k) for k in range(count)])
        sx.set_yticks([(k + 0.5) * h - 0.5 for k in range(len(arms))], arms)
        sx.set_xlabel("class (sampling seed = class)")
        sx.set_title(f"{name}: samples of each arm's first seed")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


# -- main ----------------------------------------------------------------------------------------------------------
def main() -> None:
    args = parse_args()
    setting = dict(PROFILES[args.profile])
    for key in ("steps", "device", "seeds"):
        if getattr(args, key) is not None:
            setting[key] = getattr(args, key)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [a for a in arms if a not in ARMS] + [d for d in names if d not in DATASETS]
    if unknown:
        raise SystemExit(f"unknown arm or data set {', '.join(unknown)}; arms: {', '.join(ARMS)}; "
                         f"data sets: {', '.join(DATASETS)}")
    if REFERENCE_ARM not in arms:
        raise SystemExit(f"the study compares every arm with '{REFERENCE_ARM}'; keep it in --arms")
    seeds = [int(s) for s in str(setting["seeds"]).split(",")]
    out = (args.out or Path("runs") / f"reproduce-dit-{args.profile}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    device = setting["device"]
    if device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    config = out / "config.toml"
    write_text(config, recipe_toml(setting))

    data = {name: prepare(name, args, setting, out / name) for name in names}
    for seed in seeds:  # seed by seed, so that an interrupted study still has complete sets of arms
        for name in names:
            for arm in arms:
                run_dir = out / name / "runs" / f"{arm}-s{seed}"
                if not shared.finished(run_dir, setting["steps"]):
                    train_run(arm, seed, config, data[name]["train_zip"], run_dir)
    if args.train_only:
        return

    timing_file = out / "step-times.json"
    timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    if set(arms) - set(timing):
        print(f"timing training steps ({args.timing_repeats} per arm, arms alternating) ...", flush=True)
        timing = step_times(arms, config, out, args.timing_repeats)
        write_text(timing_file, json.dumps(timing) + "\n")
    results: dict[str, Any] = {"profile": args.profile, "setting": setting, "command": " ".join(sys.argv),
                               "held_out_seed": HELD_OUT_SEED, "datasets": {}}
    tables = []
    for name in names:
        classifier, info = shared.get_classifier(data[name], setting, out / name, device)
        reference = info.pop("reference")
        runs = []
        for seed in seeds:
            for arm in arms:
                run_dir = out / name / "runs" / f"{arm}-s{seed}"
                print(f"evaluating {name}/{run_dir.name} ...", flush=True)
                record = evaluate_run(run_dir, data[name], setting, classifier, reference, device)
                runs.append({"arm": arm, "seed": seed, "run": str(run_dir), "step_s": timing[arm],
                             **shared.speed(run_dir), **record})
                print(f"  held-out {record['held_out']['mean']:.4f}, CFD {record['cfd']:.3f}, "
                      f"class accuracy {record['class_accuracy']:.3f}", flush=True)
        summary = summarise(runs, arms)
        results["datasets"][name] = {"classifier": info, "summary": summary, "runs": runs}
        tables.append(f"### {name}\n\n" + markdown_table(summary, info, setting["batch"]))
    results.update(torch=torch.__version__, loracli=loracli.__version__, date=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    for folder in shared.figure_folders(out, args.figures):
        plot_study(results, folder / f"reproduction-dit-{args.profile}.png")
    for entry in results["datasets"].values():
        for r in entry["runs"]:
            r.pop("preview", None)
    shared.publish(out, results, "\n\n".join(tables))


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:  # a missing file or a wrong checkpoint: one sentence, exit 1
        raise SystemExit(f"error: {exc}") from None
