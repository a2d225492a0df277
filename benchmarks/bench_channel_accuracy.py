"""Accuracy for the speed on digits_cnn: the ``channel`` front against ``filter``'s, equal fine-tune epochs.

Why: a channel method is worth it only if, at each latency it reaches, it keeps at least the
accuracy filter pruning keeps. Both methods get the same dense weights, the same LAMP-shaped
global targets (the default space's shape, output layer fixed), the same schedule, epochs,
learning rate and seeds, through the training loop every trial runs (``raysweep.trial.loop``,
in this process, no Ray). Each run's masked model is then compacted as its export would be, and
every distinct compact architecture is timed once against the dense one (CPU, 1 thread, calls
interleaved, medians): runs that compact to the same shapes share their figures.

Prints each run (accuracy, params, latency at batch 1 and 64, speedup), each method's front in
(accuracy max, latency_ms_b64 min) and (accuracy max, speedup max), both hypervolumes per
method (reference: accuracy 0 and the dense latency / speedup 1), and the verdict: channel's
front dominates or matches filter's when no filter front point is strictly dominated by none of
channel's points within the noise of the timing (``--tolerance``, relative).

    python benchmarks/bench_channel_accuracy.py [--targets 0.2 0.35 0.5 0.65 0.8] [--seeds 0 1] [--epochs 3]
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

import pandas as pd
import torch

import pruners
from pruners.compact import compact
from raysweep import hypervolume, pareto_front
from raysweep.config import RunConfig
from raysweep.models import create_model
from raysweep.speed.latency import measure_pair
from raysweep.trial.checkpoint import read_weights, save_checkpoint
from raysweep.trial.loop import run_loop
from raysweep.trial.sessions import LocalSession

METHODS = ("filter", "channel")
SHAPE = (1, 8, 8)


def _loop(cfg: RunConfig) -> LocalSession:
    session = LocalSession()
    threads = torch.get_num_threads()
    run_loop({"run": cfg.to_dict(), "run_dir": ""}, session)
    torch.set_num_threads(threads)  # the loop sets its own
    return session


def dense_weights(folder: Path, seed: int) -> Path:
    """The dense digits_cnn, trained as the default space's ``dense: train`` does (20 epochs, lr 0.05)."""
    session = _loop(RunConfig(epochs=20, lr=0.05, seed=seed, print_freq=0))
    save_checkpoint(session.state, folder / "dense.pt")
    return folder / "dense.pt"


def pruned_run(weights: Path, method: str, target: float, seed: int, args: argparse.Namespace) -> tuple[dict, torch.nn.Module]:
    """One trial: LAMP-shaped global target, fine-tuned ``args.epochs``; its metrics and compact model."""
    cfg = RunConfig(
        epochs=args.epochs, lr=args.lr, seed=seed, print_freq=0, method=method, weight_file=str(weights),
        targets={"classifier.2.weight": 0.0}, allocation={"family": "lamp", "target": target}, schedule="oneshot",
    )  # fmt: skip
    session = _loop(cfg)
    final = session.reports[-1]
    model = create_model("digits_cnn", dataset="digits")
    pruners.load_masked_state_dict(model, session.state.model)
    small, report = compact(model, torch.zeros(1, *SHAPE))
    row = {"method": method, "target": target, "seed": seed, "accuracy": final["accuracy"], "sparsity": final["sparsity"],
           "params": report.params_after, "exact": report.max_abs_diff}  # fmt: skip
    return row, small


def architecture(model: torch.nn.Module) -> tuple:
    """What a CPU forward costs depends on: every tensor's shape."""
    return tuple(sorted((name, tuple(t.shape)) for name, t in model.state_dict().items()))


def time_all(dense: torch.nn.Module, models: list[torch.nn.Module], repeats: int) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Each distinct compact architecture timed once, all in one interleaved measurement with the
    dense model: runs that compact to the same shapes get the same figures, not two noisy ones."""
    arches = [architecture(m) for m in models]
    first = {a: i for i, a in reversed(list(enumerate(arches)))}
    named = {"dense": dense, **{f"arch{i}": models[i] for i in sorted(first.values())}}
    figures = measure_pair(named, SHAPE, batch_sizes=(1, 64), threads=1, warmup=3, repeats=repeats)
    base = figures["dense"]["latency_ms_b64"]
    out = []
    for a in arches:
        f = figures[f"arch{first[a]}"]
        out.append({**f, "speedup": base / f["latency_ms_b64"], "arch": first[a]})
    return out, figures["dense"]


def _dominated_by(point: pd.Series, others: pd.DataFrame, tol: float) -> bool:
    """Whether some row of ``others`` is at least as accurate and at least as fast (within ``tol``)."""
    return bool(((others["accuracy"] >= point["accuracy"]) & (others["latency_ms_b64"] <= point["latency_ms_b64"] * (1 + tol))).any())


def report(runs: pd.DataFrame, dense: dict, args: argparse.Namespace) -> None:
    pd.set_option("display.width", 160)
    print(runs.drop(columns="arch").sort_values(["method", "target", "seed"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    lat = {"accuracy": "max", "latency_ms_b64": "min"}
    spd = {"accuracy": "max", "speedup": "max"}
    ref_lat = {"accuracy": 0.0, "latency_ms_b64": dense["latency_ms_b64"]}
    ref_spd = {"accuracy": 0.0, "speedup": 1.0}
    fronts = {m: pareto_front(runs[runs["method"] == m], lat) for m in METHODS}
    print(f"\ndense: latency b1 {dense['latency_ms_b1']:.3f} ms, b64 {dense['latency_ms_b64']:.3f} ms")
    for m in METHODS:
        g = runs[runs["method"] == m]
        print(f"\n{m} front (accuracy max, latency_ms_b64 min): hypervolume {hypervolume(g, lat, ref_lat):.5f}; "
              f"(accuracy max, speedup max): hypervolume {hypervolume(g, spd, ref_spd):.5f}")  # fmt: skip
        print(fronts[m][["target", "seed", "accuracy", "latency_ms_b64", "speedup", "params"]]
              .sort_values("latency_ms_b64").to_string(index=False, float_format=lambda v: f"{v:.4g}"))  # fmt: skip
    channel = runs[runs["method"] == "channel"]
    beaten = [r for _, r in fronts["filter"].iterrows() if not _dominated_by(r, channel, args.tolerance)]
    verdict = "dominates or matches" if not beaten else f"does NOT cover {len(beaten)} filter front point(s)"
    same = runs.pivot_table(index=["target", "seed"], columns="method", values="arch")
    print(f"\nsame compact architecture for filter and channel at {int((same['filter'] == same['channel']).sum())} "
          f"of {len(same)} (target, seed) pairs; {runs['arch'].nunique()} distinct architectures timed")
    print(f"channel's front {verdict} filter's (latency tolerance {args.tolerance:.0%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.2, 0.35, 0.5, 0.65, 0.8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=3, help="fine-tune epochs, the same for every run")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per model and batch size")
    parser.add_argument("--tolerance", type=float, default=0.03, help="relative latency noise allowed in the verdict")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("raysweep").setLevel(logging.ERROR)  # the loop's per-run log lines
    print(f"torch {torch.__version__}, loadavg {os.getloadavg()[0]:.2f}; epochs {args.epochs}, lr {args.lr}, seeds {args.seeds}")
    rows, models = [], []
    with tempfile.TemporaryDirectory() as tmp:
        weights = dense_weights(Path(tmp), seed=0)
        dense = create_model("digits_cnn", dataset="digits")
        dense.load_state_dict(read_weights(weights)[0])
        for method in METHODS:
            for target in args.targets:
                for seed in args.seeds:
                    row, small = pruned_run(weights, method, target, seed, args)
                    rows.append(row)
                    models.append(small)
                    print(f"  {method} {target} seed {seed}: accuracy {row['accuracy']:.4f}", flush=True)
    timed, dense_figures = time_all(dense, models, args.repeats)
    runs = pd.DataFrame([{**r, **t} for r, t in zip(rows, timed)])
    report(runs, dense_figures, args)


if __name__ == "__main__":
    main()
