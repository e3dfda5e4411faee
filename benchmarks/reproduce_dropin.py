"""The drop-in claim against an equal-compute control: LoRA added to a trained EDM vs the same EDM trained longer.

The paper's EDM gain (FID 1.97 -> 1.91, PAPER.md §4.4) comes from the drop-in recipe: a trained network, UC-LoRA
added with zero-initialised adapters, everything trained further. Whether the baseline gains as much from the
same extra training is not reported. This study runs that control at a small scale:

1. pretrain the small EDM of ``reproduce_small.py`` (no LoRA) for N steps -- one checkpoint (its EMA network);
2. from that checkpoint, continue M steps per arm and seed with the same recipe (lr warm-up and EMA ramp
   restarted, as the official drop-in recipe restarts ``cur_nimg``), through `loracli train edm --init`:

       continued       --cond none                  the control: the same network, simply trained longer
       dropin          --cond uc-lora               drop-in UC-LoRA, all parameters trained (the paper's recipe)
       dropin-frozen   --cond uc-lora --finetune    drop-in UC-LoRA, base frozen (eval mode), adapters only

   (``train --init CKPT --cond uc-lora`` is ``loracli convert CKPT --cond uc-lora`` followed by ``train --init``
   in one step, with the adapters drawn per continuation seed.) An only-LoRA drop-in arm is left out: it would
   remove the trained scale-and-shift layers, so the network no longer computes what it was trained to -- not a
   drop-in at all, and `loracli train --init --only-lora` refuses it.

Arms of one continuation seed are paired: the same data order, noise levels and noise (a function of the seed
and the step), and the two drop-in arms the same initial adapters. Measures per run: held-out EDM loss (total
and per σ, fixed noise), the classifier Fréchet distance (CFD) of ``reproduce_small.py``, Inception FID with
``--inception``; reported as the mean over seeds and the mean and 95 % t-interval of the differences to the
``continued`` run of the same seed; plus each arm's compute (steps x batch, wall time, trained parameters).

    python benchmarks/reproduce_dropin.py --profile smoke --train cifar10-jpeg-train.zip --test cifar10-jpeg-test.zip
    OMP_NUM_THREADS=1 python benchmarks/reproduce_dropin.py --profile cpu --train ... --test ...   # 2 h 20 min
    python benchmarks/reproduce_dropin.py --profile gpu --train ... --test ... --inception inception-2015-12-05.pt

Everything is cached in --out: a rerun continues an interrupted study (runs resume), and --seeds adds seeds.
"""

from __future__ import annotations

import argparse
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
                      prepare_data, publish, recipe_toml, speed, summarise_arms, train)

import loracli  # noqa: E402
from loracli.diffusion.evaluate import sigma_grid  # noqa: E402
from loracli.errors import UserError  # noqa: E402
from loracli.io.atomic import atomic_path, write_text  # noqa: E402

ARMS = {  # name: (--cond, --finetune)
    "continued": ("none", False),
    "dropin": ("uc-lora", False),
    "dropin-frozen": ("uc-lora", True),
}
REFERENCE = "continued"
_NETWORK_CPU = {"model_channels": 32, "channel_mult": [1, 2, 2], "num_blocks": 1, "attn_resolutions": [8]}
PROFILES: dict[str, dict[str, Any]] = {
    # About 2 h 20 min on one core of a 2-core CPU: 4,000 pretraining steps (256 kimg), then 3 arms x 3 seeds x 1,000.
    "cpu": {"resolution": 16, "batch": 64, "pretrain_steps": 4000, "steps": 1000, "lr": 1e-3, "lr_rampup_kimg": 10,
            "ema_halflife_kimg": 5, "network": _NETWORK_CPU, "snapshots": 4, "curve_images": 128,
            "eval_images": 1000, "cfd_num": 500, "classifier_epochs": 3, "device": "cpu", "compile": False},
    # PAPER.md §7.2's network on one GPU: 3 Mimg of pretraining, then 1 Mimg per continuation run.
    "gpu": {"resolution": 32, "batch": 512, "pretrain_steps": 6000, "steps": 2000, "lr": 1e-3, "lr_rampup_kimg": 300,
            "ema_halflife_kimg": 50, "network": {"model_channels": 64, "channel_mult": [2, 2, 2], "num_blocks": 2,
                                                 "attn_resolutions": [16]},
            "snapshots": 5, "curve_images": 2000, "eval_images": 10000, "cfd_num": 10000, "classifier_epochs": 15,
            "device": "cuda", "compile": True},
    "smoke": {**SMOKE, "pretrain_steps": 30, "steps": 10},
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_study_args(p)
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--out", type=Path, default=None, help="study folder (default runs/dropin-<profile>)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma list of {', '.join(ARMS)}")
    p.add_argument("--seeds", default="0,1,2", help="continuation seeds (each arm once per seed; >= 3 for intervals)")
    p.add_argument("--pretrain-seed", type=int, default=100, help="seed of the one pretraining run")
    p.add_argument("--pretrain-steps", type=int, default=None, help="N: pretraining steps (profile default)")
    p.add_argument("--steps", type=int, default=None, help="M: continuation steps per run (profile default)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--train-only", action="store_true", help="train the runs, skip evaluation")
    return p.parse_args()


def continue_run(arm: str, seed: int, config: Path, init: Path, data: Path, run_dir: Path) -> None:
    """M more steps of the pretrained network in one arm (resumed if it was interrupted)."""
    cond, finetune = ARMS[arm]
    train(["--config", str(config), "--init", str(init), "--cond", cond, "--data", str(data), "--seed", str(seed)]
          + (["--finetune"] if finetune else []), run_dir)


def compute(run_dir: Path, net: Any, arm: str, steps: int, batch: int) -> dict[str, Any]:
    """What a continuation run spent: images seen, wall time, and the parameters it trained."""
    trained = net.condition_parameters() if ARMS[arm][1] else net.parameters()
    return {"kimg": steps * batch / 1000, "trained_params": sum(p.numel() for p in trained), **speed(run_dir)}


# -- figure and table ----------------------------------------------------------------------------------------------
COLOURS = {"continued": "tab:blue", "dropin": "tab:orange", "dropin-frozen": "tab:green"}
MARKERS = {"continued": "o", "dropin": "s", "dropin-frozen": "^"}


def plot(summary: dict, path: Path, title: str) -> Path:
    """Left: paired held-out loss difference to ``continued`` (per seed, mean and 95 % interval); middle: the same
    per σ; right: paired CFD difference. Linear y axes, zero marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vs = f"vs_{REFERENCE}"
    arms = [a for a in summary if a != REFERENCE]
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(14, 4.2))
    draw_paired(ax, summary, arms, vs, "held_out", 100, COLOURS, MARKERS)
    draw_paired(cx, summary, arms, vs, "cfd", 1, COLOURS, MARKERS)
    ax.set_ylabel("held-out loss vs continued (%)")
    cx.set_ylabel("CFD vs continued")
    ax.set_title("paired by seed: points; mean and 95 % CI: diamonds")
    draw_per_sigma(bx, summary, arms, vs, sigma_grid(), COLOURS, MARKERS)
    bx.set_ylabel("held-out loss vs continued (%), mean and 95 % CI")
    cx.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def markdown_table(summary: dict, pretrained: dict, classifier: dict) -> str:
    vs = f"vs_{REFERENCE}"
    has_fid = all("fid" in s for s in summary.values())
    head = ("| arm | held-out loss (mean ± half-range) | vs continued: mean [95 % CI] | CFD | CFD vs continued |"
            + (" FID | FID vs continued |" if has_fid else "") + " kimg | wall time (s) | trained parameters |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    fid = f" {pretrained['fid']['fid']:.2f} | – |" if has_fid and "fid" in pretrained else " – | – |" if has_fid else ""
    lines.append(f"| pretrained (start) | {pretrained['held_out']['mean']:.4f} | – | {pretrained['cfd']:.3f} | – |"
                 f"{fid} – | – | – |")
    for arm, s in summary.items():
        paired = s[vs] if arm != REFERENCE else {}
        cell = (lambda key, **kw: format_interval(paired[key], **kw) if key in paired else "–")
        cells = [arm, f"{s['held_out']['mean']:.4f} ± {s['held_out']['spread']:.4f}",
                 cell("held_out", scale=100, unit=" %"), f"{s['cfd']['mean']:.3f} ± {s['cfd']['spread']:.3f}",
                 cell("cfd", digits=3)]
        if has_fid:
            cells += [f"{s['fid']['mean']:.2f} ± {s['fid']['spread']:.2f}", cell("fid")]
        cells += [f"{s['kimg']['mean']:g}", f"{s['train_wall_s']['mean']:.0f}",
                  f"{int(s['trained_params']['mean']):,}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nSeeds per arm: {', '.join(str(len(s['seeds'])) for s in summary.values())}. CFD floor (real test "
                 f"images, n={classifier['real_floor']['n']}): {classifier['real_floor']['cfd']:.3f}; classifier test "
                 f"accuracy {classifier['test_accuracy']:.3f}.")
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------------------------------
def main() -> None:
    args = parse_args()
    setting = dict(PROFILES[args.profile])
    for key in ("pretrain_steps", "steps", "batch", "eval_images", "curve_images", "cfd_num", "device"):
        if getattr(args, key) is not None:
            setting[key] = getattr(args, key)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    if REFERENCE not in arms:
        raise SystemExit(f"the '{REFERENCE}' arm is the control every difference is paired with; keep it in --arms")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = (args.out or Path("runs") / f"dropin-{args.profile}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    if setting["device"] == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

    data = prepare_data(args, setting, out)
    pre_config, config = out / "pretrain.toml", out / "continue.toml"
    write_text(pre_config, recipe_toml(setting, setting["pretrain_steps"], "reproduce_dropin.py"))
    write_text(config, recipe_toml(setting, setting["steps"], "reproduce_dropin.py"))
    pre_dir = out / "pretrain"
    if not finished(pre_dir, setting["pretrain_steps"]):
        train(["--config", str(pre_config), "--cond", "none", "--data", str(data["train_zip"]),
               "--seed", str(args.pretrain_seed)], pre_dir)
    pretrained = pre_dir / "ckpt.safetensors"  # the EMA network, as the released checkpoints are
    for seed in seeds:  # seed by seed, so that an interrupted study still has complete sets of arms
        for arm in arms:
            run_dir = out / "runs" / f"{arm}-s{seed}"
            if not finished(run_dir, setting["steps"]):
                continue_run(arm, seed, config, pretrained, data["train_zip"], run_dir)
    if args.train_only:
        return

    device = setting["device"]
    classifier, classifier_info = get_classifier(data, setting, out, device)
    detector, fid_ref = fid_setup(args, data, device)
    def evaluate(run_dir: Path, net: Any) -> dict[str, Any]:
        return evaluate_run(run_dir, net, data, setting, classifier, classifier_info["reference"], detector, fid_ref,
                            args.fid_num, device)

    print("evaluating the pretrained network ...", flush=True)
    pre_record = evaluate(pre_dir, loracli.load(pretrained))
    runs = []
    for seed in seeds:
        for arm in arms:
            run_dir = out / "runs" / f"{arm}-s{seed}"
            print(f"evaluating {run_dir.name} ...", flush=True)
            start = time.time()
            net = loracli.load(run_dir / "ckpt.safetensors")
            record = evaluate(run_dir, net)
            runs.append({"arm": arm, "seed": seed, "run": str(run_dir), "step": net.checkpoint["step"],
                         "params": sum(p.numel() for p in net.parameters()),
                         "adapter_params": sum(p.numel() for p in net.condition_parameters()),
                         **compute(run_dir, net, arm, net.checkpoint["step"], setting["batch"]), **record})
            print(f"  {time.time() - start:.0f} s: held-out {record['held_out']['mean']:.4f}, CFD {record['cfd']:.3f}",
                  flush=True)
    fields = {"held_out": lambda r: r["held_out"]["mean"], "cfd": lambda r: r["cfd"], "kimg": lambda r: r["kimg"],
              "train_wall_s": lambda r: r["train_wall_s"], "trained_params": lambda r: r["trained_params"]}
    summary = summarise_arms(runs, arms, REFERENCE, fields)
    classifier_info.pop("reference")
    results = {"profile": args.profile, "setting": setting, "command": " ".join(sys.argv),
               "pretrain": {"seed": args.pretrain_seed, "steps": setting["pretrain_steps"],
                            "wall_s": speed(pre_dir)["train_wall_s"],
                            **{k: v for k, v in pre_record.items() if k != "preview"}},
               "sigma_grid": sigma_grid().tolist(), "held_out_seed": HELD_OUT_SEED,
               "sampler": {"name": "heun", "steps": SAMPLE_STEPS, "nfe": 2 * SAMPLE_STEPS - 1},
               "classifier": classifier_info, "summary": summary,
               "runs": [{k: v for k, v in r.items() if k != "preview"} for r in runs],
               "torch": torch.__version__, "loracli": loracli.__version__,
               "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    publish(out, results, markdown_table(summary, pre_record, classifier_info))
    title = (f"{args.profile}: {setting['pretrain_steps']} + {setting['steps']} steps, batch {setting['batch']}, "
             f"{len(seeds)} seeds")
    for folder in figure_folders(out, args.figures):
        plot(summary, folder / f"dropin-{args.profile}.png", title)


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:  # a missing file or a wrong checkpoint: one sentence, exit 1
        raise SystemExit(f"error: {exc}") from None
