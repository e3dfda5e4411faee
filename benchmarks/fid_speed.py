"""FID feature extraction img/s: the Inception network alone, clean-fid's preprocessing, and both together.

    python benchmarks/fid_speed.py --num 8192 --batch 512                 # random-init Inception-v3 shape
    python benchmarks/fid_speed.py --weights inception-2015-12-05.pt       # the real FID network
    python benchmarks/fid_speed.py --device cpu --num 8 --batch 4          # smoke check

Without ``--weights`` the network is torchvision's Inception-v3 with random weights and no classifier
(2048-d pool features), traced to TorchScript like the real file: the same layers and FLOPs (~5.7 GFLOP per
299x299 image), so the same speed. ``network`` times the forward pass on images already resized to 299x299
(fp32, as FID requires); ``preprocess`` times what ``loracli fid CKPT`` does to every generated 32x32 uint8
image before it (clean-fid's per-image PIL bicubic resize, on the host); ``end_to_end`` is
``loracli.metrics.features.features_of_arrays`` on uint8 batches, i.e. both in sequence.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

import torch

import benchlib
from train_speed import split

SECTIONS = ("network", "preprocess", "end_to_end")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default=None, help="the real inception-2015-12-05.pt (clean mode)")
    p.add_argument("--num", type=int, default=8192, help="timed images per section (after a warm-up batch)")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--sections", default=",".join(SECTIONS))
    benchlib.add_common_args(p)
    return p.parse_args()


def random_detector(device: torch.device) -> Any:
    """An Inception-v3-shaped TorchScript feature extractor (random weights), on 0..255 images like clean mode."""
    import torchvision

    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    net.fc = torch.nn.Identity()
    net = net.eval().to(device)
    with torch.no_grad():
        traced = torch.jit.trace(net, torch.zeros(2, 3, 299, 299, device=device))

    class Random:
        mode = "clean"

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return traced((x.to(device, torch.float32) - 128) / 128).float()

    return Random()


def time_section(fn: Callable[[], Any], batches: int, device: str) -> list[float]:
    return benchlib.interleaved({"s": fn}, batches, warmup=1, sync=benchlib.synchronizer(device))["s"]


def main() -> None:
    args = parse_args()
    from loracli.runtime import pick_device

    device = pick_device(args.device)
    benchlib.set_threads(args, str(device))
    if args.weights:
        from loracli.metrics.detectors import load_detector

        detector, name = load_detector("clean", args.weights, device), "inception-2015-12-05 (real weights)"
    else:
        detector, name = random_detector(device), "Inception-v3 shape, random weights (torchvision, traced)"
    batches = max(1, args.num // args.batch)
    g = torch.Generator().manual_seed(0)
    uint8 = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8, generator=g)
    resized = torch.rand(args.batch, 3, 299, 299, generator=g).mul(255).to(device)
    results: dict[str, Any] = {"detector": name, "batch": args.batch}
    for section in split(args.sections):
        if section == "network":
            fn: Callable[[], Any] = lambda: detector(resized)
        elif section in ("preprocess", "end_to_end"):
            try:
                from loracli.metrics.features import features_of_arrays, model_input

                import cleanfid  # noqa: F401 -- the resize comes from clean-fid
            except ImportError as exc:
                results[section] = {"skipped": f"{exc}"}
                continue
            fn = ((lambda: model_input(uint8, detector.mode)) if section == "preprocess"
                  else (lambda: features_of_arrays([uint8], detector)))
        else:
            raise SystemExit(f"unknown section {section!r}; choose from {', '.join(SECTIONS)}")
        times = time_section(fn, batches, str(device))
        results[section] = {"img_s": args.batch / benchlib.median(times), "spread": benchlib.spread(times)}
        print(section, results[section], flush=True)
    summary = [f"{s}: {r['img_s']:.0f} img/s" if "img_s" in r else f"{s}: skipped ({r['skipped']})"
               for s, r in results.items() if isinstance(r, dict)]
    summary.append(f"{name}, batch {args.batch}")
    benchlib.emit(benchlib.record("fid_speed", results, "; ".join(summary), str(device)), args)


if __name__ == "__main__":
    main()
