"""Time whole-model mask computation on CIFAR VGG16-shaped weights, one row per method.

Why: masks are recomputed during fine-tuning (regrow-then-fix, AGP), on every DDP worker, so
a method that takes seconds per model would dominate short trials. Target: < 1 s per method
for all 13 convs plus the 512 -> 10 classifier (~15M weights) on a laptop-class CPU.

    python benchmarks/bench_masks.py [--repeats 3] [--threads N]
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

import pruners  # the project is installed (pip install -e .)

# CIFAR VGG16: (in, out) of each 3x3 conv, then the classifier.
VGG16_CONVS = [
    (3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
    (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512),
]
REFERENCE_TARGETS: dict[str, object] = {
    "irregular": 0.8,
    "filter": 0.5,
    "stripe": 0.5,
    "pattern": 0.8,
    "nm": "m4n2",
}


def vgg16_weights(seed: int = 0) -> list[torch.Tensor]:
    """Random-normal weights with CIFAR VGG16's shapes (no model code needed)."""
    gen = torch.Generator().manual_seed(seed)
    ws = [torch.randn(o, i, 3, 3, generator=gen) for i, o in VGG16_CONVS]
    ws.append(torch.randn(10, 512, generator=gen))
    return ws


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best wall time and best process CPU time of ``repeats`` runs.

    Best-of is the least noisy figure on a shared machine; CPU time is reported too because
    on a busy box wall time mostly measures the neighbours.
    """
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - w0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu


def run(repeats: int = 3) -> list[tuple[str, object, float, float, float, float]]:
    """Rows of (method, target, wall s, CPU s, wall s incl. library selection, sparsity)."""
    weights = vgg16_weights()
    total = sum(w.numel() for w in weights)
    rows = []
    for method in pruners.list_methods():
        target = REFERENCE_TARGETS.get(method, 0.5)
        model_options = pruners.get_method(method).model_options
        options = model_options(weights) if model_options else {}

        def masks(opts: dict = options) -> list[torch.Tensor]:
            return [pruners.compute_mask(method, w, target, **opts) for w in weights]

        seconds, cpu = best_of(masks, repeats)
        with_library = seconds
        if model_options is not None:
            with_library, _ = best_of(lambda: masks(model_options(weights)), repeats)
        kept = sum(int(m.sum()) for m in masks())
        rows.append((method, target, seconds, cpu, with_library, 1.0 - kept / total))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    weights = vgg16_weights()
    print(f"CIFAR VGG16 shapes: {len(weights)} layers, {sum(w.numel() for w in weights):,} weights, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"{'method':<10} {'target':>7} {'seconds':>8} {'cpu s':>8} {'+library':>9} {'sparsity':>9}")
    for method, target, seconds, cpu, with_library, sparsity in run(args.repeats):
        print(f"{method:<10} {str(target):>7} {seconds:8.3f} {cpu:8.3f} {with_library:9.3f} {sparsity:9.4f}")
    print("'+library': pattern's model-wide library selection (select_library) included in the time.")


if __name__ == "__main__":
    main()
