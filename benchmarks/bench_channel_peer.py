"""raysweep's ``channel`` method + compaction side by side with Torch-Pruning 1.6.1, on seven models.

Why: channel pruning is worth its accuracy cost only if the pruned network really runs faster,
and Torch-Pruning (Fang et al. 2023, DepGraph) is the reference for dependency-aware channel
pruning. Both prune 50% of the channels of every free channel group (L1 over the group) of the
same weights, with trained-like BatchNorm (non-zero beta, random running statistics), leaving the
classifier's outputs alone. Per model, in one process, 1 thread, calls interleaved, medians:

* params and MACs (batch 1) of the pruned model;
* CPU latency at batch 1 and batch 64 (8 at 224 px), medians; and the median of per-round paired
  ratios (raysweep's model, Torch-Pruning's and Torch-Pruning's again, back to back in rotating
  order), which load that changes between rounds does not bias;
* prune+compact time: raysweep ``prepare(..., "channel")`` (masks, as a trial fine-tunes with)
  + ``compact(inplace=True)``; Torch-Pruning's ``MagnitudePruner`` (dependency graph) + ``step()``,
  each on its own deep copy of the dense model that it turns into the pruned one; each part
  too. After one warm-up run of each, a garbage collection before every run, medians;
* max |diff| against the masked model: raysweep's own masks (what a trial fine-tunes); for
  Torch-Pruning, the dense model with the filters it removes zeroed (weights only: BatchNorm's
  beta then passes on a constant that removing the channel drops).

Targets on every model: latency <= 1.0 x Torch-Pruning's at equal or fewer params; prune+compact
time <= 1.0 x; raysweep exact (<= 1e-5). Where both tools produce the same architecture (every
tensor the same shape) their latencies differ by timing noise only: Torch-Pruning's model against
itself (the A/A ratio, and the notch of its median over the rounds) shows how much, and the
latency check allows that much. Torch-Pruning is a benchmark-only extra
(``pip install -e ".[bench]"``), never a dependency of raysweep.

    python benchmarks/bench_channel_peer.py [--models vgg16_bn resnet56 ...] [--repeats 7] [--runs 3]
"""
from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import time
from typing import Callable

import torch
import torchvision
from torch import nn

import pruners
from pruners.compact import compact
from pruners.testing import trained_like
from raysweep.models import create_model
from raysweep.speed.latency import measure_pair

# name -> (constructor, one sample's shape, large batch)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int], int]] = {
    "vgg16_bn": (lambda: create_model("cifar_vgg16"), (3, 32, 32), 64),
    "resnet56": (lambda: create_model("resnet56"), (3, 32, 32), 64),
    "mobilenetv2": (lambda: create_model("mobilenetv2"), (3, 32, 32), 64),
    "resnet18": (lambda: torchvision.models.resnet18(), (3, 224, 224), 8),
    "regnetx_400mf": (lambda: torchvision.models.regnet_x_400mf(), (3, 224, 224), 8),
    "densenet121": (lambda: torchvision.models.densenet121(), (3, 224, 224), 8),
    "shufflenetv2": (lambda: torchvision.models.shufflenet_v2_x1_0(), (3, 224, 224), 8),
}
RATIO = 0.5
TOL = 1e-5


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _macs(model: nn.Module, x: torch.Tensor) -> int:
    return sum(d for d, _ in pruners.count_macs(model, x).values())


def _head(model: nn.Module) -> nn.Module:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def run_raysweep(dense: nn.Module, x: torch.Tensor) -> tuple[nn.Module, float, float, float]:
    """(compact model, prepare seconds, compact seconds, max |diff| against the masked model)."""
    model = copy.deepcopy(dense)
    start = time.perf_counter()
    pruners.prepare(model, {"*": RATIO}, "channel", example_input=x)
    middle = time.perf_counter()
    small, report = compact(model, x, inplace=True)  # the copy becomes the pruned model, as Torch-Pruning's does
    return small, middle - start, time.perf_counter() - middle, report.max_abs_diff


def run_tp(dense: nn.Module, x: torch.Tensor) -> tuple[nn.Module | None, float, float, str]:
    """(pruned model or None, dependency graph seconds, step() seconds, error text or "")."""
    import torch_pruning as tp

    model = copy.deepcopy(dense)
    start = middle = time.perf_counter()
    try:
        pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=RATIO, ignored_layers=[_head(model)])  # fmt: skip
        middle = time.perf_counter()
        pruner.step()
    except Exception as exc:  # noqa: BLE001 -- a peer's crash is a figure of the comparison
        return None, middle - start, time.perf_counter() - middle, f"{type(exc).__name__}: {exc}"
    return model.eval(), middle - start, time.perf_counter() - middle, ""


def architecture(model: nn.Module) -> tuple:
    """What a CPU forward costs depends on: every tensor's name and shape."""
    return tuple(sorted((name, tuple(t.shape)) for name, t in model.state_dict().items()))


def tp_masked_reference(dense: nn.Module, x: torch.Tensor) -> nn.Module:
    """The dense model with the filters Torch-Pruning removes zeroed (weights and biases only)."""
    import torch_pruning as tp

    model, ref = copy.deepcopy(dense), copy.deepcopy(dense)
    names = {m: n for n, m in model.named_modules()}
    pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=RATIO, ignored_layers=[_head(model)])  # fmt: skip
    with torch.no_grad():
        for group in pruner.step(interactive=True):
            for dep, idxs in group:
                module = dep.target.module
                if isinstance(module, (nn.Conv2d, nn.Linear)) and pruner.DG.is_out_channel_pruning_fn(dep.handler):
                    rows = torch.tensor(tp._helpers.to_plain_idxs(idxs), dtype=torch.long)
                    target = ref.get_submodule(names[module])
                    target.weight[rows] = 0
                    if target.bias is not None:
                        target.bias[rows] = 0
            group.prune()
    return ref.eval()


def _diff(a: nn.Module, b: nn.Module, shape: tuple[int, ...]) -> float:
    x = torch.randn((2, *shape), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def _timed_runs(dense: nn.Module, x: torch.Tensor, runs: int) -> tuple[dict, nn.Module, nn.Module | None]:
    """Both pipelines ``runs`` times, interleaved (a noisy neighbour slows both alike), after a warm-up."""
    run_raysweep(dense, x), run_tp(dense, x)  # first calls pay one-off costs (imports, kernels)
    times: dict[str, list[float]] = {"rs_prepare": [], "rs_compact": [], "tp_graph": [], "tp_step": []}
    for _ in range(runs):
        gc.collect()  # a full collection inside a timed run would land on whichever tool is unlucky
        small, prepare_s, compact_s, rs_diff = run_raysweep(dense, x)
        gc.collect()
        pruned, graph_s, step_s, tp_error = run_tp(dense, x)
        for key, value in zip(times, (prepare_s, compact_s, graph_s, step_s)):
            times[key].append(value)
    row = {k: statistics.median(v) for k, v in times.items()}
    row.update(rs_s=statistics.median(map(sum, zip(times["rs_prepare"], times["rs_compact"]))),
               tp_s=statistics.median(map(sum, zip(times["tp_graph"], times["tp_step"]))), rs_diff=rs_diff, tp_error=tp_error)
    return row, small, pruned


def bench(name: str, args: argparse.Namespace) -> dict:
    """One model's row: sizes, times, exactness, and latency of dense, raysweep, Torch-Pruning and A/A."""
    ctor, shape, big = MODELS[name]
    torch.manual_seed(0)
    dense = trained_like(ctor())
    x = torch.zeros(1, *shape)
    row, small, pruned = _timed_runs(dense, x, args.runs)
    row.update(model=name, big=big, dense_params=_params(dense), rs_params=_params(small), rs_macs=_macs(small, x))
    models = {"dense": dense, "raysweep": small}
    if pruned is not None:
        row.update(tp_params=_params(pruned), tp_macs=_macs(pruned, x), same=architecture(small) == architecture(pruned),
                   tp_diff=_diff(pruned, tp_masked_reference(dense, x), shape))  # fmt: skip
        models.update(tp=pruned, tp_again=copy.deepcopy(pruned))  # A/A: the same model twice shows the noise
    figures = measure_pair(models, shape, batch_sizes=(1, big), threads=1, warmup=2, repeats=args.repeats)
    for key, label in (("raysweep", "rs"), ("tp", "tp"), ("tp_again", "aa"), ("dense", "dense")):
        if key in figures:
            row[f"{label}_b1"], row[f"{label}_bN"] = figures[key]["latency_ms_b1"], figures[key][f"latency_ms_b{big}"]
    if pruned is not None:
        for batch, label in ((1, "b1"), (big, "bN")):
            row[f"pair_{label}"], row[f"pair_aa_{label}"], row[f"noise_{label}"] = paired_ratios(
                small, pruned, models["tp_again"], shape, batch, args.repeats)
    return row


def paired_ratios(ours: nn.Module, theirs: nn.Module, again: nn.Module, shape: tuple[int, ...], batch: int,
                  repeats: int) -> tuple[float, float, float]:
    """Medians of per-round latency ratios ours/theirs and again/theirs, the three called back to back
    in rotating order each round: load that changes between rounds cancels out of each ratio; and
    the noise of such a median, the half-width of the A/A ratios' median notch (1.58 IQR / sqrt n)."""
    x = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(0))
    models = [ours, theirs, again]
    ratios: tuple[list[float], list[float]] = ([], [])
    with torch.no_grad():
        for m in models:
            m(x)
        for i in range(repeats):
            times = [0.0, 0.0, 0.0]
            for j in (i % 3, (i + 1) % 3, (i + 2) % 3):
                start = time.perf_counter()
                models[j](x)
                times[j] = time.perf_counter() - start
            ratios[0].append(times[0] / times[1])
            ratios[1].append(times[2] / times[1])
    quartiles = statistics.quantiles(ratios[1], n=4)
    notch = 1.58 * (quartiles[2] - quartiles[0]) / len(ratios[1]) ** 0.5
    return statistics.median(ratios[0]), statistics.median(ratios[1]), notch


def _ratio(row: dict, key: str, other: str = "tp") -> str:
    return f"{row[f'rs_{key}'] / row[f'{other}_{key}']:.2f}" if f"{other}_{key}" in row else "n/a"


def _latency_ok(row: dict) -> bool:
    """Paired ratios at most 1 within the timing noise: the A/A ratio's distance from 1 and its
    median's notch (a model timed against itself shows what a 'same speed' ratio looks like)."""
    return all(row[f"pair_{k}"] <= 1.0 + max(abs(row[f"pair_aa_{k}"] - 1.0), row[f"noise_{k}"]) for k in ("b1", "bN"))


def report(rows: list[dict]) -> None:
    print(f"\nchannel groups at {RATIO:.0%}, trained-like BN, 1 thread, interleaved medians (latency ms; times s)")
    print(f"{'model':<14} {'who':<9} {'params':>9} {'MACs(M)':>8} {'lat b1':>8} {'lat bN':>9} {'prune+compact':>13} "
          f"{'(prune':>7} {'compact)':>8} {'max|diff|':>9}")  # fmt: skip
    for r in rows:
        print(f"{r['model']:<14} {'dense':<9} {r['dense_params']:>9} {'':>8} {r['dense_b1']:>8.2f} {r['dense_bN']:>9.1f}  (bN: batch {r['big']})")
        print(f"{'':<14} {'raysweep':<9} {r['rs_params']:>9} {r['rs_macs'] / 1e6:>8.1f} {r['rs_b1']:>8.2f} {r['rs_bN']:>9.1f} "
              f"{r['rs_s']:>13.3f} {r['rs_prepare']:>7.3f} {r['rs_compact']:>8.3f} {r['rs_diff']:>9.1e}")  # fmt: skip
        if r["tp_error"]:
            print(f"{'':<14} {'tp 1.6.1':<9} failed: {r['tp_error'][:70]}")
            continue
        print(f"{'':<14} {'tp 1.6.1':<9} {r['tp_params']:>9} {r['tp_macs'] / 1e6:>8.1f} {r['tp_b1']:>8.2f} {r['tp_bN']:>9.1f} "
              f"{r['tp_s']:>13.3f} {r['tp_graph']:>7.3f} {r['tp_step']:>8.3f} {r['tp_diff']:>9.1e}")  # fmt: skip
        print(f"{'':<14} {'tp again':<9} {'':>9} {'':>8} {r['aa_b1']:>8.2f} {r['aa_bN']:>9.1f}  (the same model: timing noise)")
    print("(prune: raysweep prepare / Torch-Pruning's dependency graph; compact: raysweep compact / Torch-Pruning step())")
    print("\nratios raysweep / Torch-Pruning; latency: median of per-round paired ratios (A/A: Torch-Pruning's model against itself)")
    print(f"{'model':<14} {'params':>7} {'same':>5} {'lat b1':>7} {'A/A b1':>7} {'lat bN':>7} {'A/A bN':>7} {'noise':>6} {'time':>6} "
          f"{'compact/':>9} {'exact':>6}  verdict")  # fmt: skip
    print(f"{'':<14} {'':>7} {'arch':>5} {'':>7} {'':>7} {'':>7} {'':>7} {'b1/bN':>6} {'':>6} {'step':>9}")
    for r in rows:
        exact = r["rs_diff"] <= TOL
        if r["tp_error"]:
            print(f"{r['model']:<14} {'n/a':>7} {'':>5} {'':>7} {'':>7} {'':>7} {'':>7} {'':>6} {'':>6} {'':>9} {'yes' if exact else 'NO':>6}  "
                  f"{'PASS' if exact else 'FAIL'} (Torch-Pruning fails)")  # fmt: skip
            continue
        checks = {"params": r["rs_params"] <= r["tp_params"], "latency": _latency_ok(r), "time": r["rs_s"] <= r["tp_s"], "exact": exact}
        failed = [k for k, ok in checks.items() if not ok]
        print(f"{r['model']:<14} {_ratio(r, 'params'):>7} {'yes' if r['same'] else 'no':>5} {r['pair_b1']:>7.2f} {r['pair_aa_b1']:>7.2f} "
              f"{r['pair_bN']:>7.2f} {r['pair_aa_bN']:>7.2f} {max(r['noise_b1'], r['noise_bN']):>6.2f} {_ratio(r, 's'):>6} {r['rs_compact'] / r['tp_step']:>9.2f} "
              f"{'yes' if exact else 'NO':>6}  {'PASS' if not failed else 'FAIL: ' + ', '.join(failed)}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=7, help="latency calls per model and batch size")
    parser.add_argument("--runs", type=int, default=3, help="prune+compact runs per tool (median)")
    args = parser.parse_args()
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        raise SystemExit('Torch-Pruning is a benchmark extra: pip install -e ".[bench]"') from None
    torch.set_num_threads(1)
    gc.collect()
    gc.freeze()  # what the imports left is permanent: collections scan only what each run creates
    print(f"torch {torch.__version__}, loadavg {os.getloadavg()[0]:.2f}")
    rows = []
    for name in args.models:
        rows.append(bench(name, args))
        print(f"  {name} done", flush=True)
    report(rows)


if __name__ == "__main__":
    main()
