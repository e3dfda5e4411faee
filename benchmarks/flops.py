"""FLOPs per image (torch's FlopCounterMode) of every benchmark arm, and what they mean for MFU on H100/H200.

    python benchmarks/flops.py                      # all arms, counted on the CPU at batch 2 (exact, no timing)
    python benchmarks/flops.py --models edm --train-img-s 3000 --sample-img-s 250

Counted: matrix products and convolutions (2 FLOPs per multiply-add), attention included (counted through
SDPA's math path, whose products the counter sees). Forward: one network evaluation; train: forward +
backward of the same batch with every parameter trained (about 3x the forward; the input image needs no
gradient). ``lora`` is what the adapters add (their projections and omega modules) and its share of the
forward. MFU = FLOPs per image x img/s / peak, with the dense bf16 peak 989 TFLOP/s of H100 SXM and H200.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

import benchlib
from arms import ARMS, build, check

NFE_HEUN_18 = 35
SAMPLES = 50_000
MFU_TARGET = 0.35


def count_in_place_addmm() -> None:
    """Let the counter see ``addmm_`` (the adapters accumulate in place when sampling); torch counts only addmm."""
    registry = flop_counter.flop_registry
    registry.setdefault(torch.ops.aten.addmm_, registry[torch.ops.aten.addmm])


def example(model: Any, batch: int) -> tuple[torch.Tensor, ...]:
    from loracli.testing import example_inputs

    return tuple(v for v in example_inputs(model, batch=batch) if v is not None)


def adapter_flops(counts: dict[str, dict[Any, int]]) -> int:
    """FLOPs inside LoRA wrappers minus those of the projections they wrap."""
    total = 0
    for name, ops in counts.items():
        if name + ".base_layer" in counts and name.rsplit(".", 1)[-1] != "base_layer":
            total += sum(ops.values()) - sum(counts[name + ".base_layer"].values())
    return total


def count(model_name: str, arm: str, batch: int = 2, tiny: bool = False, label_dim: int = 0) -> dict[str, float]:
    """Forward and training FLOPs per image of one arm, and the adapters' part of the forward."""
    count_in_place_addmm()
    torch.manual_seed(0)
    net = build(model_name, arm, tiny=tiny, label_dim=label_dim)
    inputs = example(net, batch)
    with sdpa_kernel([SDPBackend.MATH]):
        net.eval()
        with FlopCounterMode(display=False) as fwd, torch.no_grad():
            net(*inputs)
        net.train()
        with FlopCounterMode(display=False) as train:
            net(*inputs).float().square().mean().backward()
    forward = fwd.get_total_flops() / batch
    lora = adapter_flops(fwd.get_flop_counts()) / batch
    return {"forward_gflop": forward / 1e9, "train_gflop": train.get_total_flops() / batch / 1e9,
            "lora_forward_gflop": lora / 1e9, "lora_share": lora / forward if forward else 0.0,
            "params_m": sum(p.numel() for p in net.parameters()) / 1e6}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="edm,iddpm,nano", help="comma list of edm, iddpm, nano")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--tiny", action="store_true", help="small networks (smoke runs)")
    p.add_argument("--train-img-s", type=float, default=None, help="a measured training img/s: its bf16 MFU")
    p.add_argument("--sample-img-s", type=float, default=None, help="a measured sampling img/s (NFE 35)")
    benchlib.add_common_args(p)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    benchlib.set_threads(args)
    peak = benchlib.PEAK_BF16["H100"]
    results: dict[str, Any] = {"peak_bf16_tflops": {k: v / 1e12 for k, v in benchlib.PEAK_BF16.items()}}
    summary = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        for arm in check(model, list(ARMS[model])):
            r = count(model, arm, args.batch, args.tiny)
            # Bounds at the target MFU: training img/s, and 50k samples at Heun 18 (NFE 35).
            r["train_img_s_at_35pct_mfu"] = MFU_TARGET * peak / (r["train_gflop"] * 1e9)
            r["sample_50k_s_at_35pct_mfu"] = SAMPLES * NFE_HEUN_18 * r["forward_gflop"] * 1e9 / (MFU_TARGET * peak)
            r["sample_50k_s_at_100pct_mfu"] = SAMPLES * NFE_HEUN_18 * r["forward_gflop"] * 1e9 / peak
            if args.train_img_s:
                r["train_mfu_at_given_img_s"] = r["train_gflop"] * 1e9 * args.train_img_s / peak
            if args.sample_img_s:
                r["sample_mfu_at_given_img_s"] = r["forward_gflop"] * 1e9 * NFE_HEUN_18 * args.sample_img_s / peak
            results[f"{model}/{arm}"] = r
            summary.append(f"{model}/{arm}: fwd {r['forward_gflop']:.2f}, train {r['train_gflop']:.2f} GFLOP/img"
                           f" (lora {r['lora_share']:.2%} of fwd)")
            print(f"{model}/{arm}: {r}", flush=True)
    rec = benchlib.record("flops", results, "; ".join(summary) + f"; batch {args.batch}")
    benchlib.emit(rec, args)


if __name__ == "__main__":
    main()
