"""Does compaction turn filter pruning into real CPU speed, and is the exported model exact?

Why: a masked model runs dense kernels over its zeros, so it is exactly as slow as the dense
one; only removing channels makes it faster. Target (a): the compact VGG16 at batch 64 takes at
most 1.3 x flops_ratio x the dense latency, where flops_ratio is what the accounting reports for
the masked model (remaining / dense MACs). (b): a 50%-filter-pruned ResNet-56 exported with
``torch.export`` matches the masked model (max |diff| <= 1e-5) and its parameter count is set
beside the accounting's. Random weights: only shapes matter for speed.

    python benchmarks/bench_export.py [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import pruners  # the project is installed (pip install -e .)
from pruners.compact import compact, squashed_copy
from pruners.testing import trained_like
from raysweep.speed.latency import measure_pair
from raysweep.speed.program import load_exported, save_model
from raysweep.models import create_model


def _macs(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    counts = pruners.count_macs(model, x)
    return sum(d for d, _ in counts.values()), sum(r for _, r in counts.values())


def vgg(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    model = create_model("cifar_vgg16").eval()
    pruners.prepare(model, {"block*": 0.5}, "filter")
    x1 = torch.randn(1, 3, 32, 32)
    dense_macs, remaining = _macs(model, x1)
    flops_ratio = remaining / dense_macs
    start = time.perf_counter()
    small, report = compact(model, x1)
    compact_s = time.perf_counter() - start
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        fmt = save_model(small, torch.randn(2, 3, 32, 32), Path(d) / "vgg.pt2")
        exported = load_exported(Path(d) / "vgg.pt2")
    export_s = time.perf_counter() - start
    compact_macs = _macs(small, x1)[0]
    dense = squashed_copy(model)
    figures = measure_pair({"dense": dense, "compact": small, "exported": exported}, (3, 32, 32),
                           batch_sizes=(1, 64), threads=args.threads, warmup=1, repeats=args.repeats)
    d, c, e = (figures[k]["latency_ms_b64"] for k in ("dense", "compact", "exported"))
    print("(a) CIFAR VGG16, filter 0.5 on every conv, random weights")
    print(f"    compact: {report.channels_removed} of {report.channels_dead} dead channels removed in {compact_s:.2f} s; "
          f"params {report.params_before} -> {report.params_after}; {fmt} save+load {export_s:.1f} s")
    print(f"    flops_ratio (accounting, masked model) = {flops_ratio:.3f}; compact model's own MACs / dense = "
          f"{compact_macs / dense_macs:.3f}")
    for name in ("dense", "compact", "exported"):
        f = figures[name]
        print(f"    {name:9s} latency ms  b1 {f['latency_ms_b1']:8.2f}   b64 {f['latency_ms_b64']:8.1f}")
    bound = 1.3 * flops_ratio * d
    ok = max(c, e) <= bound
    print(f"    target compact <= 1.3 x flops_ratio x dense = {bound:.1f} ms: compact {c:.1f} ms, exported {e:.1f} ms"
          f" -> {'PASS' if ok else 'FAIL'} (speedup b64: compact {d / c:.2f}x, exported {d / e:.2f}x)")


def resnet(args: argparse.Namespace) -> None:
    print("(b) CIFAR ResNet-56, filter 0.5 on every conv, random weights, exported")
    variants = (("default BN (constants 0)", False, False), ("random BN stats (constants folded)", True, False),
                ("random BN stats, fold_borders=True", True, True))
    for label, trained_bn, fold_borders in variants:
        torch.manual_seed(0)
        model = create_model("resnet56").eval()
        if trained_bn:
            trained_like(model, 1)
        pruners.prepare(model, {"*conv*": 0.5, "*downsample.0.weight": 0.5}, "filter")
        x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(7))
        small, report = compact(model, x[:1], fold_borders=fold_borders)
        with tempfile.TemporaryDirectory() as d:
            fmt = save_model(small, x[:2], Path(d) / "r56.pt2")
            exported = load_exported(Path(d) / "r56.pt2")
            with torch.no_grad():
                diff = float((exported(x) - model(x)).abs().max())
        acct = pruners.sparsity_report(model)
        params = sum(p.numel() for p in exported.parameters())
        print(f"  {label}: {fmt}, max |exported - masked| = {diff:.2e} ({'PASS' if diff <= 1e-5 else 'FAIL'} <= 1e-5)")
        print(f"    params: dense {acct['params_total']}, accounting params_remaining {acct['params_remaining']}, "
              f"exported {params} (compact report {report.params_after})")
        print(f"    dead channels {report.channels_dead}, removed {report.channels_removed}; kept: "
              f"{sum(report.kept_dead.values())} ({len(report.kept_dead)} reasons); bias maps on {len(report.bias_maps)} convs")
        if not trained_bn:
            figures = measure_pair({"dense": squashed_copy(model), "exported": exported}, (3, 32, 32),
                                   batch_sizes=(64,), threads=args.threads, warmup=1, repeats=args.repeats)
            dd, ee = figures["dense"]["latency_ms_b64"], figures["exported"]["latency_ms_b64"]
            print(f"    latency b64: dense {dd:.1f} ms, exported {ee:.1f} ms, speedup {dd / ee:.2f}x; "
                  f"flops_ratio {acct_ratio(model):.3f}")


def acct_ratio(model: nn.Module) -> float:
    d, r = _macs(model, torch.randn(1, 3, 32, 32))
    return r / d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per model and batch size (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), loadavg {os.getloadavg()[0]:.2f}")
    vgg(args)
    resnet(args)


if __name__ == "__main__":
    main()
