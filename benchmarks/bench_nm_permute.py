"""How much N:M channel permutations (Pool & Yu 2021) gain: retained magnitude and accuracy.

Why: ``pruners.nm_permute.permute_for_nm`` reorders channels so that N:M keeps more |w|, at
the cost of a search bounded per channel group. This prints what it buys:

1. Retained magnitude, per layer and in total, for CIFAR VGG16 and ResNet-56 at m4n2 and
   m8n4 with the per-group time budget used. These weights are the models' *random
   initialisation* (no CIFAR data offline): magnitude structure is weak there, so gains are
   smaller than on trained weights (Pool & Yu report larger ones on trained networks).
2. ``digits_cnn`` trained here in-process on the embedded digits set (a few seconds): retained
   magnitude on trained weights and the accuracy right after one-shot N:M pruning, without
   and with permutations, per training seed.
3. ``--finetune``: the same dense weights pruned and fine-tuned by ``python -m raysweep.prune
   --prune_type nm`` twice, without and with ``--nm_permute`` (the flag the loop integration
   adds; the script says so and stops if ``raysweep.prune`` does not have it yet).

    python benchmarks/bench_nm_permute.py [--budget 5] [--max-rounds 200] [--window 64]
        [--models vgg16,resnet56] [--targets m4n2,m8n4] [--seeds 0,1,2] [--threads 1]
        [--skip-magnitude] [--finetune [--ft-epochs 5] [--out DIR]]
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import pruners
from pruners.nm_permute import PermuteReport, permute_for_nm
from raysweep.data import build_datasets
from raysweep.models import create_model


def magnitude_section(args: argparse.Namespace) -> None:
    """Per-layer retained |w| before/after on randomly initialised CIFAR models."""
    print("== 1. retained magnitude, CIFAR models at their RANDOM initialisation (seed 0) ==")
    print(f"per-group time budget {args.budget} s, max rounds {args.max_rounds}, window {args.window}, "
          f"{torch.get_num_threads()} thread(s)")  # fmt: skip
    summary = []
    for name in args.models:
        for target in args.targets:
            torch.manual_seed(0)
            model = create_model(name, num_classes=10, dataset="cifar10").eval()
            report = permute_for_nm(
                model, {"*": target}, torch.zeros(1, 3, 32, 32),
                time_budget_s=args.budget, max_rounds=args.max_rounds, window=args.window,
            )  # fmt: skip
            print(f"\n-- {name} {target}")
            print(report.table())
            summary.append((name, target, report))
    print("\nmodel     target   groups  gain %   search s  stopped (time/rounds/converged)")
    for name, target, r in summary:
        stops = [sum(g.stopped == s for g in r.groups) for s in ("time", "rounds", "converged")]
        print(f"{name:<9} {target:<7} {len(r.groups):>6} {100 * r.gain:>7.3f} {r.seconds:>9.1f}  {stops[0]}/{stops[1]}/{stops[2]}")


def train_digits(seed: int, epochs: int) -> nn.Module:
    """digits_cnn trained in-process with raysweep's defaults (SGD 0.05, momentum, wd 5e-4)."""
    train, _, _ = build_datasets("digits")
    torch.manual_seed(seed)
    model = create_model("digits_cnn", num_classes=10, dataset="digits")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(seed))
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module) -> float:
    _, val, _ = build_datasets("digits")
    x, y = val.tensors
    return float((model.eval()(x).argmax(1) == y).float().mean())


def one_shot(model: nn.Module, target: str, permute: bool, args) -> tuple[float, PermuteReport | None]:
    """Accuracy after one-shot N:M on every layer (no fine-tuning), optionally permuted first."""
    work = copy.deepcopy(model)
    report = None
    if permute:
        report = permute_for_nm(work, {"*": target}, torch.zeros(1, 1, 8, 8),
                                time_budget_s=args.budget, max_rounds=args.max_rounds, window=args.window)  # fmt: skip
    pruners.prepare(work, {"*": target}, "nm")
    return accuracy(work), report


def digits_section(args: argparse.Namespace, out: Path) -> dict[int, Path]:
    """Trained digits_cnn: retained |w| and one-shot accuracy; saves the dense weights."""
    print(f"\n== 2. digits_cnn trained in-process ({args.train_epochs} epochs), one-shot N:M, no fine-tuning ==")
    print("seed target  dense acc  nm acc  nm+perm acc  kept |w| gain %  search s")
    weights: dict[int, Path] = {}
    for seed in args.seeds:
        model = train_digits(seed, args.train_epochs)
        path = out / f"digits_cnn_dense_seed{seed}.pt"
        torch.save(model.state_dict(), path)
        weights[seed] = path
        dense = accuracy(model)
        for target in args.targets:
            plain, _ = one_shot(model, target, False, args)
            permuted, report = one_shot(model, target, True, args)
            print(f"{seed:>4} {target:<7} {dense:>9.4f} {plain:>7.4f} {permuted:>12.4f} {100 * report.gain:>15.3f} {report.seconds:>9.2f}")
    return weights


def prune_has_flag() -> bool:
    from raysweep import prune

    return "--nm_permute" in prune.build_parser().format_help()


def finetune_section(args: argparse.Namespace, weights: dict[int, Path], out: Path) -> int:
    """``python -m raysweep.prune`` without and with ``--nm_permute``, per seed and target."""
    print(f"\n== 3. fine-tuned {args.ft_epochs} epochs by python -m raysweep.prune (one-shot nm, digits) ==")
    if not prune_has_flag():
        print("raysweep.prune has no --nm_permute flag yet (the loop integration adds it); skipped")
        return 2
    print("seed target  nm acc  nm+perm acc  (final epoch; best at final sparsity in brackets)")
    for seed in args.seeds:
        for target in args.targets:
            accs = []
            for permute in (False, True):
                name = f"digits-nm-{target}-seed{seed}{'-perm' if permute else ''}"
                cmd = [sys.executable, "-m", "raysweep.prune", "--prune_type", "nm", "--ratio", target,
                       "--weight_file", str(weights[seed]), "--epochs", str(args.ft_epochs), "--seed", str(seed),
                       "--output", str(out), "--name", name, "--print_freq", "0", "-q"]  # fmt: skip
                if permute:
                    cmd.append("--nm_permute")
                done = subprocess.run(cmd, check=False, capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
                    return 1
                summary = json.loads((out / name / "summary.json").read_text())
                accs.append((summary["accuracy"], summary["best_accuracy"]))
            (a0, b0), (a1, b1) = accs
            print(f"{seed:>4} {target:<7} {a0:>6.4f} ({b0:.4f}) {a1:>6.4f} ({b1:.4f})")
    return 0


def _csv(kind):
    return lambda s: [kind(v) for v in s.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=5.0, help="time budget per channel group, seconds")
    p.add_argument("--max-rounds", type=int, default=200, help="escapes / windows after the first descent")
    p.add_argument("--window", type=int, default=64, help="channels per window on wider layers")
    p.add_argument("--models", type=_csv(str), default=["vgg16", "resnet56"])
    p.add_argument("--targets", type=_csv(str), default=["m4n2", "m8n4"])
    p.add_argument("--seeds", type=_csv(int), default=[0, 1, 2], help="digits training seeds")
    p.add_argument("--train-epochs", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-magnitude", action="store_true", help="only the digits sections")
    p.add_argument("--finetune", action="store_true", help="also run python -m raysweep.prune twice per seed/target")
    p.add_argument("--ft-epochs", type=int, default=5)
    p.add_argument("--out", default=None, help="folder for dense weights and prune runs (default: a temp dir)")
    args = p.parse_args(argv)
    try:
        for t in args.targets:
            pruners.parse_nm(t)
    except ValueError as err:
        p.error(str(err))
    if args.finetune and not prune_has_flag():
        p.error("--finetune needs `python -m raysweep.prune --nm_permute` (the loop integration); not there yet")
    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_nm_permute_"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if not args.skip_magnitude:
        magnitude_section(args)
    weights = digits_section(args, out)
    rc = finetune_section(args, weights, out) if args.finetune else 0
    print(f"\ntotal {time.perf_counter() - start:.0f} s; files in {out}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
