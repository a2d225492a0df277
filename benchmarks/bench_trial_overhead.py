"""What a sweep trial costs beyond its own training: the per-trial overhead of each executor.

Runs N digits trials through the real sweep (Ray Tune; by default one worker per trial trains in
the trial's process, several workers with DDP in the sweep's long-lived TorchTrainer worker
groups; ``--executor trainer`` gives each trial a TorchTrainer of its own), then the same N trial
configs through the same loop in this process without Ray, one after another. Prints:

* per-trial fixed overhead = trial wall time - time inside the training loop (min/median/max),
  where the trial wall time is Tune's ``time_total_s`` (first call of the trial function to its
  last report); targets: median <= 3 s for 1-worker trials, <= 5 s for 2-worker DDP trials;
* the sweep's wall time divided by the sum of in-loop times, and the same ratio for the plain
  sequential loop (Ray's total cost: scheduling, process start, reports, checkpoints);
* the sweep-level overhead per trial, (wall x concurrency - sum of in-loop) / N, which also
  counts what the first figure cannot see (actor start, scheduling gaps).

Dense weights are trained once before the timed part (not counted), Ray is started before it.

    python benchmarks/bench_trial_overhead.py [--trials 12] [--workers 1] [--epochs 2] [--executor auto]
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

import ray

from raysweep.ray_env import init_ray
from raysweep.results.collect import build_reports
from raysweep.space import load_space, trial_run_config
from raysweep.sweep.driver import base_run_config, dense_weights, run_sweep
from raysweep.sweep.executors import get_executor, max_concurrent_trials
from raysweep.trial.loop import run_loop
from raysweep.trial.sessions import LocalSession


def space_mapping(trials: int, workers: int, epochs: int, cpus_per_worker: float, executor: str) -> dict:
    return {
        "name": "overhead", "model": "digits_cnn", "dataset": "digits", "dense": "train", "dense_epochs": 5,
        "trials": trials, "search": "random", "seed": 0, "epochs": epochs, "lr": 0.01, "batch_size": 64,
        "resources": {"workers_per_trial": workers, "cpus_per_worker": cpus_per_worker, "executor": executor},
        "methods": {"irregular": {"*": {"uniform": [0.3, 0.9]}}, "filter": {"features.*": {"uniform": [0.1, 0.5]}}},
        "schedules": {"oneshot": {}},
    }


def plain_loop(space, exp_dir: Path, weights: str) -> tuple[float, float]:
    """The same trial configs, sequentially in this process, no Ray: (wall, sum of in-loop)."""
    from ray.tune import ExperimentAnalysis

    base = base_run_config(space, weights)
    base.workers = 1  # the plain loop is one process; in-loop time is what it is compared on
    configs = [trial_run_config(space, t.config, base) for t in ExperimentAnalysis(str(exp_dir)).trials]
    run_loop({"run": configs[0].to_dict(), "run_dir": ""}, LocalSession())  # imports, first-call costs
    start, in_loop = time.perf_counter(), 0.0
    for cfg in configs:
        session = LocalSession()
        run_loop({"run": cfg.to_dict(), "run_dir": ""}, session)
        in_loop += session.reports[-1]["train_s"]
    return time.perf_counter() - start, in_loop


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--workers", type=int, default=1, help="workers per trial (2: DDP through TorchTrainer)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--cpus_per_worker", type=float, default=0.95,
                   help="just under 1, so that 2 workers and the trial function fit on 2 CPUs")
    p.add_argument("--executor", default="auto", help="resources.executor: auto, inprocess, pool, trainer")
    p.add_argument("--storage", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    storage = Path(args.storage or tempfile.mkdtemp(prefix="raysweep-overhead-")).resolve()
    space = load_space(space_mapping(args.trials, args.workers, args.epochs, args.cpus_per_worker, args.executor))

    init_ray()
    weights = dense_weights(space, storage, None)  # trained once, not timed
    executor = get_executor(space)
    concurrency = max_concurrent_trials(executor, ray.cluster_resources())
    start = time.perf_counter()
    exp_dir = run_sweep(space, storage, f"overhead-w{args.workers}")
    sweep_wall = time.perf_counter() - start
    trials = pd.read_csv(build_reports(exp_dir, space.objectives)["trials"])
    done = trials[trials["status"] == "TERMINATED"]
    overhead = (done["wall_s"] - done["train_s"]).tolist()
    in_loop = float(done["train_s"].sum())
    plain_wall, plain_in_loop = plain_loop(space, exp_dir, weights)

    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; {len(done)}/{len(trials)} trials finished, "
          f"{args.workers} worker(s) per trial, {args.epochs} epochs, {concurrency} at once, executor {executor.name}")
    print(f"per-trial overhead (wall_s - train_s): min {min(overhead):.2f} s, median {statistics.median(overhead):.2f} s, "
          f"max {max(overhead):.2f} s   (target median <= {3 if args.workers == 1 else 5} s)")
    print(f"sweep wall {sweep_wall:.1f} s / sum of in-loop {in_loop:.1f} s = {sweep_wall / in_loop:.2f}")
    print(f"sweep-level overhead per trial (wall x {concurrency} - in-loop) / N: {(sweep_wall * concurrency - in_loop) / len(done):.2f} s")
    print(f"plain sequential loop, no Ray: wall {plain_wall:.1f} s / in-loop {plain_in_loop:.1f} s = {plain_wall / plain_in_loop:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
