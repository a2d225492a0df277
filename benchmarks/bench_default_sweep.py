"""Time the main job: `python -m raysweep.search` with no arguments (the embedded default).

Target: at least 16 trials across all five methods, finished within
10 minutes on a 2-core machine. Prints wall time, trial counts per method and status, and
the per-trial fixed overhead (wall_s - train_s).

    python benchmarks/bench_default_sweep.py [--storage DIR]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--storage", default=None, help="results folder (default: a fresh temporary one)")
    args = p.parse_args(argv)
    storage = Path(args.storage or tempfile.mkdtemp(prefix="raysweep-bench-"))
    start = time.perf_counter()
    rc = subprocess.call([sys.executable, "-m", "raysweep.search", "--storage", str(storage), "-q"], stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    if rc != 0:
        print(f"raysweep.search exited {rc}")
        return rc
    trials = pd.read_csv(next(storage.glob("*/trials.csv")))
    overhead = trials["wall_s"] - trials["train_s"]
    print(f"load average at end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"wall time of `python -m raysweep.search` (dense training included): {wall:.1f} s  (target <= 600 s)")
    print(f"trials: {len(trials)}  (target >= 16)   status: {trials['status'].value_counts().to_dict()}")
    print(f"trials per method: {trials['method'].value_counts().sort_index().to_dict()}")
    print(f"per-trial fixed overhead wall_s - train_s: min {overhead.min():.1f} s, median {overhead.median():.1f} s, max {overhead.max():.1f} s")
    print(f"best accuracy at sparsity >= 0.8: {trials.loc[trials['sparsity'] >= 0.8, 'accuracy'].max():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
