"""What the reproduction studies share: CIFAR-10 at the study's resolution, `loracli train` runs, their
evaluation (held-out loss, classifier Fréchet distance, Inception FID), and paired-difference intervals.

Used by ``reproduce_small.py`` (arms trained from scratch) and ``reproduce_dropin.py`` (arms continued from
one pretrained checkpoint). Everything a study computes is cached in its folder, so a rerun continues.
"""

from __future__ import annotations

import argparse
import io
import json
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
from loracli.diffusion.evaluate import held_out_loss  # noqa: E402
from loracli.io.atomic import atomic_path, write_text  # noqa: E402

# The smoke profiles' shared part: every step of a study in minutes on a CPU, numbers meaningless.
SMOKE = {"resolution": 16, "batch": 16, "lr": 1e-3, "lr_rampup_kimg": 0.1, "ema_halflife_kimg": 0.1,
         "train_images": 2000, "network": {"model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1,
                                           "attn_resolutions": [8]},
         "snapshots": 2, "curve_images": 32, "eval_images": 64, "cfd_num": 64, "classifier_epochs": 1,
         "device": "cpu", "compile": False}
HELD_OUT_SEED = 1234  # the fixed noise of the held-out loss
SAMPLE_STEPS = 18     # EDM Heun, NFE 35 (the paper's CIFAR-10 sampler)


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
    limit = setting.get("train_images")  # the smoke profile trains on the first few images only
    if limit:
        arrays["train_x"], arrays["train_y"] = arrays["train_x"][:limit], arrays["train_y"][:limit]
    zip_path = args.train.resolve()
    if open_dataset(args.train).resolution != resolution or limit:
        zip_path = out / "data" / f"{args.train.stem}-{resolution}x{resolution}{f'-{limit}' if limit else ''}.zip"
        if not zip_path.exists():
            write_zip(zip_path, arrays["train_x"], arrays["train_y"])
    return {**arrays, "train_zip": zip_path}


# -- training -----------------------------------------------------------------------------------------------------
def toml_layer(tables: dict[str, dict[str, Any]], comment: str) -> str:
    """A --config layer (TOML tables of JSON-compatible values) over loracli's own recipe."""
    lines = [f"# {comment}"]
    for name, values in tables.items():
        lines += [f"[{name}]"] + [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def recipe_toml(setting: dict[str, Any], steps: int, script: str) -> str:
    """A study's --config layer over loracli's edm-cifar10 recipe: its network, batch, schedule and device."""
    network = {"img_resolution": setting["resolution"], **setting["network"], "dropout": 0.0}
    schedule = {"batch": setting["batch"], "steps": steps, "lr": setting["lr"],
                "lr_rampup_kimg": setting["lr_rampup_kimg"], "ema_halflife_kimg": setting["ema_halflife_kimg"],
                "ema_rampup_ratio": 0.05, "snapshot_every": max(1, steps // setting["snapshots"]),
                "log_every": max(1, min(50, steps // 40)), "device": setting["device"], "compile": setting["compile"]}
    tables = {"network": network, "train": schedule, "augment": {"p": 0}, "sample": {"images": 0}}
    return toml_layer(tables, f"written by benchmarks/{script}: the study's layer over "
                              "loracli/configs/edm-cifar10.toml")


def train(arguments: list[str], run_dir: Path) -> None:
    """`loracli train edm ARGUMENTS --outdir RUN_DIR`, or `--resume` where an interrupted run left its state."""
    command = [sys.executable, "-m", "loracli", "train", "edm", *arguments, "--outdir", str(run_dir)]
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

def interleaved_step_times(model: str, overrides: dict[str, dict[str, Any]], config: Path, out: Path,
                           repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds per training step of each arm (``overrides``: arm -> recipe overrides), measured in this
    process by loracli's own Trainer with the arms alternating step by step, so that a busy shared machine
    slows every arm alike; the first ``warmup`` steps (torch.compile on a GPU) are left out."""
    from loracli.train.loop import Trainer, make_loader
    from loracli.train.recipe import load_recipe, resolve_duration

    trainers, batches = {}, {}
    for arm, arm_overrides in overrides.items():
        recipe = resolve_duration(load_recipe(model, None, config, arm_overrides))
        trainers[arm] = Trainer(recipe, out / "timing" / arm)
        batches[arm] = make_loader(trainers[arm].dataset, recipe, trainers[arm].process, trainers[arm].micro_batch, 0)
    times: dict[str, list[float]] = {arm: [] for arm in overrides}
    try:
        for k in range(repeats + warmup):
            for arm in overrides:
                start = time.perf_counter()
                trainers[arm].train_step(batches[arm])
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                if k >= warmup:
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


# -- paired differences ----------------------------------------------------------------------------------------
def figure_folders(out: Path, figures: Path | None) -> list[Path]:
    """Where a study's figures go: its output folder, and ``--figures`` (e.g. docs/figures) when given."""
    folders = [out] + ([figures] if figures else [])
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    return folders


def publish(out: Path, results: dict[str, Any], table: str) -> None:
    """Write a study's results.json and results.md (atomically) and print the table."""
    write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    write_text(out / "results.md", table + "\n")
    print(table)
    print(f"results: {out / 'results.json'}")


def paired_interval(differences: list[float], level: float = 0.95) -> dict[str, Any]:
    """Mean of paired differences (one per seed) and its two-sided Student-t interval (n - 1 degrees of
    freedom); with one seed there is no interval."""
    from scipy import stats

    d = np.asarray(differences, dtype=np.float64)
    out: dict[str, Any] = {"n": int(d.size), "mean": float(d.mean()), "values": d.tolist(), "level": level}
    if d.size > 1:
        half = float(stats.t.ppf((1 + level) / 2, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size))
        out.update(low=out["mean"] - half, high=out["mean"] + half)
    return out


def format_interval(entry: dict[str, Any], scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    """``+1.23 [−0.40, +2.86]`` (mean and interval, times ``scale``)."""
    text = f"{scale * entry['mean']:+.{digits}f}{unit}"
    if "low" in entry:
        text += f" [{scale * entry['low']:+.{digits}f}, {scale * entry['high']:+.{digits}f}]"
    return text.replace("-", "−")


def add_study_args(p: argparse.ArgumentParser) -> None:
    """The options both studies take: data, evaluation sizes, FID, device and figures."""
    p.add_argument("--train", type=Path, required=True, help="training images: EDM dataset zip (32x32 CIFAR-10)")
    p.add_argument("--test", type=Path, required=True, help="held-out images: EDM dataset zip")
    p.add_argument("--eval-images", type=int, default=None, help="test images for the final held-out loss")
    p.add_argument("--curve-images", type=int, default=None, help="test images for the per-snapshot curve")
    p.add_argument("--cfd-num", type=int, default=None, help="samples per run for the classifier Fréchet distance")
    p.add_argument("--inception", type=Path, default=None, help="inception-2015-12-05.pt: also compute FID")
    p.add_argument("--fid-num", type=int, default=10000, help="samples per run for FID (with --inception)")
    p.add_argument("--device", default=None, help="cpu or cuda (profile default)")
    p.add_argument("--figures", type=Path, default=None, help="also write the figures here (e.g. docs/figures)")


def fid_setup(args: argparse.Namespace, data: dict[str, Any], device: str) -> tuple[Any, Any]:
    """The Inception detector and the training images' statistics, with --inception; else ``(None, None)``."""
    if args.inception is None:
        return None, None
    from loracli.metrics.detectors import load_detector
    from loracli.metrics.reference import resolve

    detector = load_detector("clean", args.inception, device)
    return detector, resolve(str(data["train_zip"]), detector, batch=256)


def summarise_arms(runs: list[dict[str, Any]], arms: list[str], reference: str,
                   fields: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per arm: each field's values over seeds (mean, half-range spread) and, for the held-out loss (relative),
    its per-σ values (relative), CFD and FID (absolute), the differences to the ``reference`` arm's run of the
    same seed with their mean and 95 % interval (``vs_<reference>``)."""
    out: dict[str, dict[str, Any]] = {}
    for arm in arms:
        rows = [r for r in runs if r["arm"] == arm and "held_out" in r]
        if not rows:
            continue
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in rows], "params": rows[0]["params"],
                                 "adapter_params": rows[0]["adapter_params"]}
        if all("fid" in r for r in rows):
            fields = {**fields, "fid": lambda r: r["fid"]["fid"]}
        for key, read in fields.items():
            values = np.asarray([read(r) for r in rows], dtype=np.float64)
            entry[key] = {"mean": float(values.mean()), "spread": float((values.max() - values.min()) / 2),
                          "values": values.tolist()}
        entry["per_sigma"] = [r["held_out"]["per_sigma"] for r in rows]
        out[arm] = entry
    if reference in out:  # paired by seed: the same data order and noise draws as the reference arm's run
        for entry in out.values():
            entry[f"vs_{reference}"] = paired_differences(entry, out[reference])
    return out


def paired_differences(entry: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Differences to the reference arm's run of the same seed: held-out loss relative (total and per σ), CFD and
    FID absolute; each with its mean and 95 % t-interval over the seeds both arms ran."""
    out: dict[str, Any] = {}
    for key, relative in (("held_out", True), ("cfd", False), ("fid", False)):
        if key not in entry or key not in base:
            continue
        ref = dict(zip(base["seeds"], base[key]["values"]))
        diffs = [(v / ref[s] - 1) if relative else (v - ref[s])
                 for s, v in zip(entry["seeds"], entry[key]["values"]) if s in ref]
        if diffs:
            out[key] = paired_interval(diffs)
    ref_sigma = dict(zip(base["seeds"], base["per_sigma"]))
    pairs = [(np.asarray(v), np.asarray(ref_sigma[s])) for s, v in zip(entry["seeds"], entry["per_sigma"])
             if s in ref_sigma]
    if pairs:
        levels = range(len(pairs[0][0]))
        out["per_sigma"] = [paired_interval([float(v[k] / r[k] - 1) for v, r in pairs]) for k in levels]
    return out


# -- figures -------------------------------------------------------------------------------------------------------
def draw_paired(axis: Any, summary: dict[str, Any], arms: list[str], vs: str, key: str, scale: float,
                colours: dict[str, str], markers: dict[str, str]) -> None:
    """One column per arm: its paired differences ``summary[arm][vs][key]`` per seed (points) and their mean with
    the 95 % interval (diamond and bar), times ``scale``; zero marked."""
    for k, arm in enumerate(arms):
        entry = summary[arm][vs].get(key)
        if entry is None:
            continue
        axis.scatter([k] * entry["n"], scale * np.asarray(entry["values"]), color=colours[arm], alpha=0.5,
                     marker=markers[arm], s=18)
        if "low" in entry:
            below, above = scale * (entry["mean"] - entry["low"]), scale * (entry["high"] - entry["mean"])
            axis.errorbar([k + 0.15], [scale * entry["mean"]], yerr=[[below], [above]], color=colours[arm],
                          capsize=4, fmt="D")
    axis.axhline(0, color="grey", lw=0.8)
    axis.set_xticks(range(len(arms)), arms)
    axis.set_xlim(-0.5, max(len(arms), 1) - 0.5)
    axis.grid(alpha=0.3, axis="y")


def draw_per_sigma(axis: Any, summary: dict[str, Any], arms: list[str], vs: str, sigmas: np.ndarray,
                   colours: dict[str, str], markers: dict[str, str]) -> None:
    """Per arm, the held-out loss per σ relative to the reference run of the same seed (%): the mean of the paired
    differences and, with two or more seeds, their 95 % band; σ on a log axis, zero marked."""
    for arm in arms:
        per_sigma = summary[arm][vs].get("per_sigma")
        if not per_sigma:
            continue
        axis.plot(sigmas, [100 * e["mean"] for e in per_sigma], marker=markers[arm], color=colours[arm], ms=4,
                  label=arm)
        if all("low" in e for e in per_sigma):
            axis.fill_between(sigmas, [100 * e["low"] for e in per_sigma], [100 * e["high"] for e in per_sigma],
                              color=colours[arm], alpha=0.15)
    axis.axhline(0, color="grey", lw=0.8)
    axis.set_xscale("log")
    axis.set_xlabel("σ")
    axis.grid(alpha=0.3)
    if arms:
        axis.legend()
