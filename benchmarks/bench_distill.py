"""Accuracy at high sparsity with and without distillation from the dense model, at equal epochs.

Per seed: the dense model is trained (15 epochs, the test fixture's recipe), then each case is
fine-tuned from it with the same recipe (AGP to half the epochs, then fine-tuning at the final
sparsity; SGD, lr 0.01, the defaults otherwise) once per distillation setting: alpha 0 (plain
cross-entropy), 0.5 and 0.9, temperature 4. Everything runs in this process (no Ray), on one
thread. Cases:
  digits_cnn irregular 0.97   the embedded digits set
  digits_cnn filter 0.7       (the output layer's rows are classes: kept)
  lenet300 irregular 0.97     LeNet-300-100 on ``digits28``: the digits upsampled to 28x28, so
                              the MNIST model takes them unchanged (1,437 train / 360 val images)

Prints final and best (at final sparsity) val accuracy, mean and spread over the seeds.

    python benchmarks/bench_distill.py [--seeds 0 1 2] [--epochs 10]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from raysweep.config import RunConfig
from raysweep.data import DATASETS, DatasetInfo, build_datasets
from raysweep.trial.checkpoint import save_checkpoint
from raysweep.trial.loop import run_loop
from raysweep.trial.sessions import LocalSession

CASES = {  # label -> model, dataset, method, targets
    "digits_cnn irregular 0.97": ("digits_cnn", "digits", "irregular", {"*": 0.97}),
    "digits_cnn filter 0.7": ("digits_cnn", "digits", "filter", {"*": 0.7, "classifier.2.weight": 0.0}),
    "lenet300 irregular 0.97": ("lenet300", "digits28", "irregular", {"*": 0.97}),
}
ALPHAS = (0.0, 0.5, 0.9)
TEMPERATURE = 4.0


def register_digits28() -> None:
    """``digits28``: the embedded digits, bilinearly upsampled to 28x28 (normalised as digits)."""

    def build(root, augment):
        train, val, info = build_datasets("digits")
        up = [TensorDataset(F.interpolate(ds.tensors[0], size=(28, 28), mode="bilinear", align_corners=False), ds.tensors[1])
              for ds in (train, val)]  # fmt: skip
        return up[0], up[1], DatasetInfo("digits28", 10, (1, 28, 28), "mnist", info.mean, info.std)

    DATASETS["digits28"] = build


def run(cfg: RunConfig) -> LocalSession:
    session = LocalSession()
    run_loop({"run": cfg.to_dict(), "run_dir": ""}, session)
    return session


def dense(model: str, dataset: str, seed: int, folder: Path) -> tuple[Path, float]:
    session = run(RunConfig(model=model, dataset=dataset, epochs=15, seed=seed, print_freq=0))
    path = folder / f"{model}-{dataset}-{seed}.pt"
    save_checkpoint(session.state, path)
    return path, session.reports[-1]["accuracy"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.01)
    args = p.parse_args(argv)
    register_digits28()
    torch.set_num_threads(1)
    results: dict[tuple[str, float], list[tuple[float, float]]] = {}
    dense_acc: dict[str, list[float]] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            weights = {}
            for label, (model, dataset, method, targets) in CASES.items():
                if (model, dataset) not in weights:
                    weights[model, dataset] = dense(model, dataset, seed, Path(tmp))
                path, acc = weights[model, dataset]
                dense_acc.setdefault(label, []).append(acc)
                for alpha in ALPHAS:
                    cfg = RunConfig(model=model, dataset=dataset, weight_file=str(path), epochs=args.epochs, lr=args.lr, seed=seed,
                                    print_freq=0, method=method, targets=targets, schedule="agp",
                                    schedule_params={"start_epoch": 0, "end_epoch": args.epochs // 2, "frequency": 1},
                                    distill_alpha=alpha, distill_temperature=TEMPERATURE)  # fmt: skip
                    last = run(cfg).reports[-1]
                    results.setdefault((label, alpha), []).append((last["accuracy"], last["best_accuracy"]))
                    print(f"  seed {seed} {label:26s} alpha {alpha:.1f}: accuracy {last['accuracy']:.4f} best "
                          f"{last['best_accuracy']:.4f} sparsity {last['sparsity']:.4f}", flush=True)  # fmt: skip

    def summary(values: list[float]) -> str:
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.4f} ± {spread:.4f}"

    print(f"\n{len(args.seeds)} seeds, {args.epochs} fine-tune epochs (AGP to epoch {args.epochs // 2}), lr {args.lr}, T {TEMPERATURE:g}; "
          f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    print(f"{'case':28s} {'dense':>16s} {'alpha':>5s} {'final accuracy':>18s} {'best accuracy':>18s} {'gain (final)':>13s}")
    for label in CASES:
        base = statistics.mean(a for a, _ in results[label, 0.0])
        for alpha in ALPHAS:
            got = results[label, alpha]
            finals, bests = [a for a, _ in got], [b for _, b in got]
            print(f"{label:28s} {summary(dense_acc[label]):>16s} {alpha:5.1f} {summary(finals):>18s} {summary(bests):>18s} "
                  f"{statistics.mean(finals) - base:+13.4f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
