"""What one LoRA-adapted projection adds: counted kernels (ATen ops that are not views) and FLOPs, per variant.

    python benchmarks/lora_ops.py             # EDM CIFAR-10's 16x16 qkv (256 -> 768), batch 8

Each row compares the adapted projection with the bare projection, forward and backward, in the two
activation layouts (channels-first as on the CPU, channels_last as in GPU training). On a GPU every counted
op is (at least) one kernel launch, so this is the adapter's launch cost; the FLOPs say how much real work
it adds. Counting needs no timing, so the figures are exact and machine independent.
"""

from __future__ import annotations

import argparse
import collections
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import benchlib
from flops import count_in_place_addmm


class OpCounter(TorchDispatchMode):
    """Counts the non-view ATen ops dispatched while active (views launch no kernel) and the bytes they write
    (a floor on memory traffic: every output is written once)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.bytes_written = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if not func.is_view and func.overloadpacket.__name__ not in ("detach", "lift_fresh"):
            self.ops[func.overloadpacket.__name__] += 1
            outs = out if isinstance(out, (tuple, list)) else [out]
            self.bytes_written += sum(t.numel() * t.element_size() for t in outs if isinstance(t, torch.Tensor))
        return out

    @property
    def total(self) -> int:
        return sum(self.ops.values())


class Context:
    """The condition a ConditionedModel would hold: noise levels / timesteps, class vectors, embedding."""

    def __init__(self, n: int, embedding: int, classes: int) -> None:
        self.noise_level = torch.randint(0, 4000, (n,))
        self.class_labels = torch.nn.functional.one_hot(torch.arange(n) % classes, classes).float()
        self.embedding = torch.randn(n, embedding)

    def require(self, field: str) -> torch.Tensor:
        return getattr(self, field)


def branch(variant: str, d_in: int, d_out: int, embedding: int, classes: int) -> Any:
    from loracli.conditioning.composers import ClassVector, EmbeddingMLP, TimeTable
    from loracli.conditioning.lora import LoRABranch

    if variant == "uc-lora":
        return LoRABranch(d_in, d_out, 4, 18, EmbeddingMLP(embedding, [128, 64], 18), bias=True)
    if variant == "time-lora":
        return LoRABranch(d_in, d_out, 4, 11, TimeTable(4000, 11))
    return LoRABranch(d_in, d_out, 4, classes, ClassVector())


def measure(layer: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Ops forward and backward (input and every parameter trained), and forward FLOPs."""
    x = x.detach().requires_grad_(True)
    with OpCounter() as fwd:
        y = layer(x)
    loss = (y * torch.randn_like(y)).sum()  # an upstream gradient in y's own layout, as inside a network
    with OpCounter() as bwd:
        loss.backward()
    with FlopCounterMode(display=False) as flops, torch.no_grad():
        layer(x)
    return {"ops_forward": fwd.total, "ops_backward": bwd.total, "flops_forward": flops.get_total_flops(),
            "mb_written_forward": fwd.bytes_written / 2 ** 20, "mb_written_backward": bwd.bytes_written / 2 ** 20,
            "forward_ops": dict(fwd.ops)}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--channels", type=int, default=256, help="d_in (d_out = 3 x d_in, a qkv projection)")
    p.add_argument("--resolution", type=int, default=16)
    p.add_argument("--variants", default="uc-lora,time-lora,class-lora")
    benchlib.add_common_args(p)
    return p.parse_args()


def main() -> None:
    from loracli import nn as lnn
    from loracli.conditioning.lora import LoRAProjection

    args = parse_args()
    benchlib.set_threads(args)
    count_in_place_addmm()
    n, c, res, emb, classes = args.batch, args.channels, args.resolution, 512, 10
    torch.manual_seed(0)
    x = torch.randn(n, c, res, res)
    layouts = {"channels-first": x, "channels_last": x.contiguous(memory_format=torch.channels_last)}
    results: dict[str, Any] = {}
    summary = []
    for layout, inp in layouts.items():
        base = lnn.Conv2d(c, 3 * c, 1)
        results[f"base {layout}"] = plain = measure(base, inp)
        for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
            ctx = Context(n, emb, classes)
            layer = LoRAProjection(lnn.Conv2d(c, 3 * c, 1), ctx)
            layer.add_branch(variant, branch(variant, c, 3 * c, emb, classes))
            r = measure(layer, inp)
            r["extra_ops_forward"] = r["ops_forward"] - plain["ops_forward"]
            r["extra_ops_backward"] = r["ops_backward"] - plain["ops_backward"]
            r["extra_flops_share"] = r["flops_forward"] / plain["flops_forward"] - 1
            r["written_ratio"] = ((r["mb_written_forward"] + r["mb_written_backward"])
                                  / (plain["mb_written_forward"] + plain["mb_written_backward"]))
            results[f"{variant} {layout}"] = r
            summary.append(f"{variant} {layout}: +{r['extra_ops_forward']} fwd / +{r['extra_ops_backward']} bwd ops, "
                           f"+{r['extra_flops_share']:.1%} FLOPs, {r['written_ratio']:.2f}x bytes written")
    shape = f"{c}->{3 * c} at {res}x{res}, batch {n}"
    benchlib.emit(benchlib.record("lora_ops", results, f"{shape}: " + "; ".join(summary)), args)


if __name__ == "__main__":
    main()
