"""CPU regression check: fp32 forward img/s of our networks beside the reference code's, and LoRA's overhead.

    python benchmarks/cpu_forward.py --ref /path/to/NVlabs/edm --iddpm-ref /path/to/improved-diffusion
    python benchmarks/cpu_forward.py --cifar              # also the real EDM CIFAR-10 DDPM++ (batch 2)
    python benchmarks/cpu_forward.py --skip edm,iddpm     # nano and LoRA only: no reference code needed

The reference checkouts come from ``--ref`` / ``--iddpm-ref`` or ``$LORACLI_EDM_REF`` / ``$LORACLI_IDDPM_REF``;
a comparison whose code is not given stops with one sentence (skip it with ``--skip``).

Each comparison builds our network, builds the reference network with the same constructor arguments and
copies the weights over (the outputs must agree to float rounding), then times both in the same process,
alternating repeat by repeat; the figure that matters is the ratio of the medians, ours / reference (> 1:
ours is faster). The LoRA overhead is the same kind of ratio between a network with and without adapters,
for the forward pass and a training step (forward + backward).
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

import torch

import benchlib
import refcode

EDM_SMALL = dict(model_channels=32, channel_mult=[1, 2], num_blocks=1, dropout=0.0)
IDDPM_SMALL = dict(model_channels=32, channel_mult=[1, 2], num_res_blocks=1, attn_resolutions=[16], num_heads=4,
                   dropout=0.0)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ref", default=None, help="NVlabs/edm checkout (default: $LORACLI_EDM_REF)")
    p.add_argument("--iddpm-ref", default=None, help="openai/improved-diffusion checkout (default: $LORACLI_IDDPM_REF)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--cifar", action="store_true", help="also compare the full EDM CIFAR-10 DDPM++ (batch 2)")
    p.add_argument("--skip", default="", help="comma list of sections to skip: edm,iddpm,nano,lora")
    benchlib.add_common_args(p)
    return p.parse_args()


def forward(net: Any, *inputs: Any) -> Callable[[], Any]:
    def run() -> Any:
        with torch.no_grad():
            return net(*inputs)
    return run


def train_step(net: Any, *inputs: Any) -> Callable[[], None]:
    """Forward + backward of a mean-square loss (what a training step costs, without the optimiser)."""
    def run() -> None:
        net.zero_grad(set_to_none=True)
        net(*inputs).square().mean().backward()
    return run


def compare(candidates: dict[str, Callable[[], Any]], batch: int, repeats: int) -> dict[str, Any]:
    """img/s of each candidate (medians of interleaved repeats), the spread, and the first/second ratio."""
    times = benchlib.interleaved(candidates, repeats, warmup=1, clock=benchlib.cpu_clock())
    names = list(candidates)
    out: dict[str, Any] = {f"{n}_img_s": batch / benchlib.median(times[n]) for n in names}
    out["spread"] = max(benchlib.spread(t) for t in times.values())
    if len(names) == 2:
        out[f"{names[0]}_over_{names[1]}"] = benchlib.median(times[names[1]]) / benchlib.median(times[names[0]])
    return out


def edm_inputs(batch: int, resolution: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and log-normal noise levels as EDM's training draws them."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, resolution, resolution, generator=g)
    return x, (torch.randn(batch, generator=g) * 1.2 - 1.2).exp()


def edm_vs_reference(path: Any, batch: int, repeats: int, **overrides: Any) -> dict[str, Any]:
    import loracli

    torch.manual_seed(0)
    ours = loracli.create_model("edm", preset="cifar10", **overrides).eval()
    ref = refcode.edm_network(path, ours).eval()
    x, sigma = edm_inputs(batch)
    with torch.no_grad():
        diff = (ours(x, sigma) - ref(x, sigma)).abs().max().item()
    result = compare({"ours": forward(ours, x, sigma), "reference": forward(ref, x, sigma)}, batch, repeats)
    return {**result, "max_abs_diff": diff, "batch": batch}


def iddpm_vs_reference(path: Any, batch: int, repeats: int) -> dict[str, Any]:
    import loracli

    torch.manual_seed(0)
    ours = loracli.create_model("iddpm", preset="cifar10", **IDDPM_SMALL).eval()
    ref = refcode.iddpm_network(path, ours).eval()
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 4000, (batch,), generator=g)
    t_ref = t.float() * (1000.0 / 4000)  # the reference's diffusion wrapper rescales before the network
    with torch.no_grad():
        diff = (ours(x, t) - ref(x, t_ref)).abs().max().item()
    result = compare({"ours": forward(ours, x, t), "reference": forward(ref, x, t_ref)}, batch, repeats)
    return {**result, "max_abs_diff": diff, "batch": batch}


def nano_forward(batch: int, repeats: int) -> dict[str, Any]:
    import loracli

    torch.manual_seed(0)
    net = loracli.create_model("nano").eval()
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 1000, (batch,), generator=g)
    times = benchlib.interleaved({"nano": forward(net, x, t)}, repeats, warmup=1, clock=benchlib.cpu_clock())
    return {"img_s": batch / benchlib.median(times["nano"]), "spread": benchlib.spread(times["nano"]), "batch": batch}


def lora_overhead(batch: int, repeats: int) -> dict[str, Any]:
    """Baseline vs adapted network: uc-lora on the small EDM, time-lora on nano; forward and train step."""
    import loracli

    torch.manual_seed(0)
    x, sigma = edm_inputs(batch)
    g = torch.Generator().manual_seed(1)
    xn, t = torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 1000, (batch,), generator=g)
    pairs = {
        "edm-small uc-lora": (lambda c: loracli.create_model("edm", preset="cifar10", cond=c, **EDM_SMALL),
                              "uc-lora", (x, sigma)),
        "nano time-lora": (lambda c: loracli.create_model("nano", cond=c), "time-lora", (xn, t)),
    }
    out: dict[str, Any] = {}
    for name, (make, cond, inputs) in pairs.items():
        base, adapted = make("none").train(), make(cond).train()
        for what, fn in (("forward", forward), ("train_step", train_step)):
            r = compare({"baseline": fn(base, *inputs), "lora": fn(adapted, *inputs)}, batch, repeats)
            out[f"{name} {what}"] = {"baseline_img_s": r["baseline_img_s"], "lora_img_s": r["lora_img_s"],
                                     "overhead": r["baseline_img_s"] / r["lora_img_s"] - 1, "spread": r["spread"]}
    return out


def main() -> None:
    args = parse_args()
    benchlib.set_threads(args)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    # Both checkouts are looked up before anything is timed, so a missing one stops the script at once.
    edm_path = refcode.edm_checkout(args.ref, "--ref", required=True) if "edm" not in skip else None
    iddpm_path = refcode.iddpm_checkout(args.iddpm_ref, "--iddpm-ref", required=True) if "iddpm" not in skip else None
    results: dict[str, Any] = {"threads": torch.get_num_threads(), "clock": benchlib.cpu_clock().__name__}
    summary = []
    if "edm" not in skip:
        r = results["edm-small"] = edm_vs_reference(edm_path, args.batch, args.repeats, **EDM_SMALL)
        summary.append(f"edm-small ours/ref {r['ours_over_reference']:.3f} ({r['ours_img_s']:.0f} img/s)")
        if args.cifar:
            r = results["edm-cifar10"] = edm_vs_reference(edm_path, 2, max(3, args.repeats // 2), dropout=0.0)
            summary.append(f"edm-cifar10 ours/ref {r['ours_over_reference']:.3f} ({r['ours_img_s']:.2f} img/s)")
    if "iddpm" not in skip:
        r = results["iddpm-small"] = iddpm_vs_reference(iddpm_path, args.batch, args.repeats)
        summary.append(f"iddpm-small ours/ref {r['ours_over_reference']:.3f} ({r['ours_img_s']:.0f} img/s)")
    if "nano" not in skip:
        r = results["nano"] = nano_forward(args.batch, args.repeats)
        summary.append(f"nano {r['img_s']:.0f} img/s")
    if "lora" not in skip:
        results["lora"] = lora_overhead(args.batch, args.repeats)
        summary += [f"{k} {v['overhead']:+.1%}" for k, v in results["lora"].items()]
    summary.append(f"batch {args.batch}, spread <= {max(_spreads(results)):.0%}")
    benchlib.emit(benchlib.record("cpu_forward", results, "; ".join(summary)), args)


def _spreads(results: dict[str, Any]) -> list[float]:
    found = [0.0]
    for value in results.values():
        if isinstance(value, dict):
            found += [value["spread"]] if "spread" in value else _spreads(value)
    return found


if __name__ == "__main__":
    main()
