"""Time one CIFAR VGG16 training step (forward + backward + SGD step), dense vs masked, per method.

Why: a mask is a ``torch.nn.utils.parametrize`` parametrization, so every forward recomputes
``where(enforced, w * mask, w)`` for each masked weight and every backward runs its gradient;
every fine-tune step of every trial pays for it. Target: masked step <= 5% over dense.

Each variant (dense, and one model per method) has its own model, SGD optimizer (momentum
0.9, weight decay) and fixed random batch; the variants take turns step by step (rotating the
order each round) so machine-load drift hits them alike. Figures are medians over ``--steps``
after ``--warmup``. When a method's overhead is above the target (``--profile auto``), a
torch.profiler pass shows which ops the masks add, per step.

    python benchmarks/bench_masked_step.py [--steps 10] [--warmup 2] [--threads N]
        [--batch-size 64] [--methods irregular,filter,nm,pattern] [--alternatives]
        [--profile auto|always|never]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

import pruners
from raysweep.models import create_model

# The reference project's example targets, applied to every prunable layer ("*").
METHOD_TARGETS: dict[str, object] = {"irregular": 0.8, "filter": 0.5, "nm": "m4n2", "pattern": 0.8}
TARGET_OVERHEAD = 0.05


@dataclass
class Variant:
    name: str
    target: object
    model: nn.Module
    optimizer: torch.optim.Optimizer
    masked_layers: int = 0
    after_step: Optional[Callable[[], None]] = None  # e.g. re-zero pruned weights
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        if self.after_step is not None:
            self.after_step()


def make_variant(name: str, model: nn.Module, target: object = "", masked_layers: int = 0, after_step=None) -> Variant:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    return Variant(name, target, model, opt, masked_layers, after_step)


def fresh_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)  # every variant starts from the same weights
    return create_model("vgg16", dataset="cifar10")


def build_variants(methods: list[str], seed: int, alternatives: bool) -> list[Variant]:
    variants = [make_variant("dense", fresh_model(seed))]
    for method in methods:
        model = fresh_model(seed)
        report = pruners.prepare(model, {"*": METHOD_TARGETS[method]}, method)
        variants.append(make_variant(method, model, METHOD_TARGETS[method], len(report.pruned)))
    if alternatives:
        variants += alternative_variants(seed)
    return variants


# ----------------------------------------------------------------------------------------
# Alternatives (benchmark-only, not library code): the same irregular 0.8 masks applied in
# two cheaper ways, to size what the library's parametrization costs against them.


class MulOnlyMask(nn.Module):
    """``w * mask`` with a float mask: no ``torch.where``, no bool->float promotion."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.float32))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def _irregular_masks(seed: int) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    model = fresh_model(seed)
    pruners.prepare(model, {"*": 0.8}, "irregular")
    masks = {name: wm.mask.clone() for name, wm in pruners.masked_parameters(model).items()}
    pruners.squash(model)  # plain weights with the zeros in place
    return model, masks


def alternative_variants(seed: int) -> list[Variant]:
    out = []
    # (1) mul-only parametrization
    model, masks = _irregular_masks(seed)
    for name, mask in masks.items():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        parametrize.register_parametrization(module, "weight", MulOnlyMask(mask))
    out.append(make_variant("alt:mul-only", model, 0.8, len(masks)))
    # (2) no parametrization: plain weights, re-zeroed in place after each optimizer step
    model, masks = _irregular_masks(seed)
    pairs = [(model.get_parameter(name), mask.to(torch.float32)) for name, mask in masks.items()]

    @torch.no_grad()
    def rezero() -> None:
        for p, m in pairs:
            p.mul_(m)

    out.append(make_variant("alt:zero-after-step", model, 0.8, len(masks), after_step=rezero))
    return out


# ----------------------------------------------------------------------------------------


def time_steps(variants: list[Variant], x, y, steps: int, warmup: int) -> None:
    """Round-robin: each round runs one step of every variant, in a rotated order."""
    n = len(variants)
    for r in range(warmup + steps):
        order = variants[r % n:] + variants[: r % n]
        for v in order:
            w0, c0 = time.perf_counter(), time.process_time()
            v.step(x, y)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            if r >= warmup:
                v.wall.append(wall)
                v.cpu.append(cpu)


def _overhead(value: float, base: float) -> float:
    return (value / base - 1.0) * 100.0


def print_table(variants: list[Variant]) -> list[Variant]:
    dense = variants[0]
    dw, dc = statistics.median(dense.wall), statistics.median(dense.cpu)
    print(f"{'method':<20} {'target':>6} {'layers':>6} {'dense ms':>9} {'masked ms':>10} {'overhead':>9} "
          f"{'min-based':>9} {'cpu ovh':>8}")
    over = []
    for v in variants[1:]:
        mw, mc = statistics.median(v.wall), statistics.median(v.cpu)
        ovh = _overhead(mw, dw)
        ovh_min = _overhead(min(v.wall), min(dense.wall))
        ovh_cpu = _overhead(mc, dc)
        print(f"{v.name:<20} {str(v.target):>6} {v.masked_layers:>6} {dw * 1e3:9.1f} {mw * 1e3:10.1f} "
              f"{ovh:8.1f}% {ovh_min:8.1f}% {ovh_cpu:7.1f}%")
        if not v.name.startswith("alt:") and ovh > TARGET_OVERHEAD * 100:
            over.append(v)
    spread = (max(dense.wall) - min(dense.wall)) / dw * 100
    print(f"dense step: median {dw * 1e3:.1f} ms, min {min(dense.wall) * 1e3:.1f} ms, "
          f"max-min spread {spread:.0f}% of median over {len(dense.wall)} steps (noise floor)")
    print("overhead: masked median / dense median - 1 (wall); min-based: best step vs best step; "
          "cpu ovh: same on process CPU time (less sensitive to other processes)")
    return over


def mask_cost(v: Variant, repeats: int) -> float:
    """Median seconds of the mask work alone for one step, outside the model.

    Parametrized variants: compute every masked ``weight`` (the parametrization forward) and
    backpropagate a gradient through it into ``original`` (what autograd adds per step).
    Re-zero variant: its in-place ``mul_`` pass after the optimizer step.
    """
    if v.after_step is not None:
        fn = v.after_step
    else:
        originals, modules = [], []
        for m in v.model.modules():
            if parametrize.is_parametrized(m, "weight"):
                originals.append(m.parametrizations["weight"].original)
                modules.append(m)
        if not modules:
            return 0.0
        grads = [torch.ones_like(p) for p in originals]

        def fn() -> None:
            for p in originals:
                p.grad = None
            torch.autograd.backward([m.weight for m in modules], grads)

    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    for p in v.model.parameters():
        p.grad = None
    return statistics.median(times[1:])


def print_mask_work(variants: list[Variant], repeats: int) -> None:
    dense = variants[0]
    med, best = statistics.median(dense.wall) * 1e3, min(dense.wall) * 1e3
    print(f"\n[mask work alone] forward+backward through the masks only (re-zero variant: its mul_ pass), "
          f"median of {repeats}; as % of the dense step's median {med:.0f} ms / best {best:.0f} ms")
    for v in variants[1:]:
        ms = mask_cost(v, repeats) * 1e3
        print(f"  {v.name:<20} {ms:8.1f} ms/step = {ms / med * 100:5.1f}% / {ms / best * 100:5.1f}%")


def profile(variants: list[Variant], x, y, steps: int, top: int) -> None:
    """Per-op self CPU time per step of each variant vs dense: which ops the masks add."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    def per_op(v: Variant) -> dict[str, tuple[float, float]]:
        v.step(x, y)  # one unprofiled step first
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                v.step(x, y)
        return {e.key: (e.self_cpu_time_total / 1e3 / steps, e.count / steps) for e in prof.key_averages()}

    base = per_op(variants[0])
    base_total = sum(ms for ms, _ in base.values())
    for v in variants[1:]:
        ops = per_op(v)
        total = sum(ms for ms, _ in ops.values())
        keys = set(base) | set(ops)
        # Ops whose call count per step differs are the ones the masks add; rank those by time.
        added = sorted(
            ((ops.get(k, (0, 0))[0] - base.get(k, (0, 0))[0], k) for k in keys
             if ops.get(k, (0, 0))[1] != base.get(k, (0, 0))[1]),
            reverse=True,
        )
        print(f"\n[profile] {v.name} ({v.masked_layers} masked layers), {steps} profiled step(s): self CPU "
              f"{total:.1f} ms/step vs dense {base_total:.1f} ms/step ({_overhead(total, base_total):+.1f}%)")
        print(f"  {'op whose calls/step differ from dense':<58} {'dense ms':>9} {'masked ms':>10} {'diff ms':>8} {'calls d/m':>11}")
        for d, k in added[:top]:
            bms, bn = base.get(k, (0.0, 0.0))
            mms, mn = ops.get(k, (0.0, 0.0))
            print(f"  {k[:58]:<58} {bms:9.1f} {mms:10.1f} {d:+8.1f} {bn:5.0f}/{mn:<5.0f}")
        extra = sum(d for d, k in added if k.startswith("aten::"))
        print(f"  aten ops with extra calls, together: {extra:+.1f} ms/step ({extra / base_total * 100:+.1f}% of "
              f"the dense step's self CPU); ops with equal call counts (conv etc.) differ by noise only")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (median taken)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    parser.add_argument("--batch-size", type=int, default=64, help="random 3x32x32 inputs per step")
    parser.add_argument("--methods", default=",".join(METHOD_TARGETS), help="comma-separated subset of "
                        + ", ".join(f"{m} ({t})" for m, t in METHOD_TARGETS.items()))
    parser.add_argument("--alternatives", action="store_true", help="also time two benchmark-only ways "
                        "to apply the irregular masks: a mul-only parametrization, and re-zeroing after step")
    parser.add_argument("--profile", choices=["auto", "always", "never"], default="auto",
                        help="torch.profiler pass: auto = only for methods over the 5%% target")
    parser.add_argument("--profile-steps", type=int, default=2, help="steps per profiled variant")
    parser.add_argument("--mask-repeats", type=int, default=9, help="runs of the mask-work-alone timing (median)")
    parser.add_argument("--top", type=int, default=12, help="ops shown per profile")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHOD_TARGETS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {list(METHOD_TARGETS)}")

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (args.batch_size,), generator=gen)
    variants = build_variants(methods, args.seed, args.alternatives)
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else ["?"]
    print(f"CIFAR VGG16, batch {args.batch_size}, CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.steps} steps after {args.warmup} warm-up, variants interleaved; "
          f"load average at start {' '.join(load)}")
    time_steps(variants, x, y, args.steps, args.warmup)
    over = print_table(variants)
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else ["?"]
    print(f"target: masked <= {TARGET_OVERHEAD * 100:.0f}% over dense; load average at end {' '.join(load)}")
    to_profile = variants[1:] if args.profile == "always" else over if args.profile == "auto" else []
    if to_profile or args.alternatives:
        print_mask_work(variants, args.mask_repeats)
    if to_profile:
        profile([variants[0]] + to_profile, x, y, args.profile_steps, args.top)


if __name__ == "__main__":
    main()
