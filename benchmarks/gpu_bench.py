"""One prepared run for a GPU machine: trial throughput, several trials per GPU, a DDP trial.

Three parts, each printed as a table and written to ``--out`` (JSON):
  throughput  images/s of one trial (raysweep's loop on the GPU, no Ray) vs a hand-written loop
              with the same model, data and augmentation, for fp32, bf16, bf16 + channels_last:
              resnet20 on random CIFAR-like uint8 files (torchvision's layout), crop + flip on.
  sharing     trials per hour of a sweep (resnet20 trials, one worker each, in their Tune
              processes) with 1, 2 and 4 trials per GPU (resources.gpus_per_worker 1, 0.5, 0.25):
              the concurrency the sweep computes from the cluster's GPUs (what Tune is given),
              the most trials seen running at once (from trials.csv's finished_at - wall_s:
              Tune's timestamps have a 1 s resolution, so approximate), wall time, trials/hour.
  nccl        one 2-worker trial in the pool executor (DDP over NCCL, one GPU per worker): its
              accuracy, the ranks' weight spread (0: identical) and wall time. Needs two GPUs:
              NCCL refuses two ranks on one device, so with one GPU it is reported as skipped.

``--smoke`` runs every part on the CPU in about a minute (tests/test_gpu_bench.py): tiny data,
Ray started with one declared GPU (trials asking for a GPU share then train on the CPU), two
trials sharing it (one sweep), and the DDP trial on gloo with two CPU workers. Budget on a GPU
machine: ~5 minutes.

    python benchmarks/gpu_bench.py [--smoke] [--out gpu_bench.json]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from loop_workload import images_per_s, loop_run, plain_run, write_fake_cifar


@dataclass
class Sizes:
    """How big each part is: the real run, or the CPU smoke test."""

    train: int
    epochs: int
    batch: int
    sweep_train: int
    sweep_trials: int
    sweep_epochs: int
    cpus: int  # Ray's CPUs: each trial holds one
    shares: tuple[int, ...]  # trials per GPU, one sweep each


REAL = Sizes(train=50_000, epochs=3, batch=512, sweep_train=10_000, sweep_trials=8, sweep_epochs=2, cpus=max(4, os.cpu_count() or 4),
             shares=(1, 2, 4))
# The smoke test shares the declared GPU two ways with two trials: they must overlap.
SMOKE = Sizes(train=32, epochs=1, batch=32, sweep_train=32, sweep_trials=2, sweep_epochs=1, cpus=4, shares=(2,))
SETTINGS = {"fp32": {"precision": "fp32", "channels_last": False}, "bf16": {"precision": "bf16", "channels_last": False},
            "bf16 + channels_last": {"precision": "bf16", "channels_last": True}}  # fmt: skip


def throughput(root: Path, sizes: Sizes, device: str) -> list[dict[str, Any]]:
    rows = []
    for name, setting in SETTINGS.items():
        common = dict(epochs=sizes.epochs, batch=sizes.batch, threads=1, device=device)
        loop = loop_run(root, **common, options=setting)
        plain = plain_run(root, "tensor", **common, channels_last=setting["channels_last"], precision=setting["precision"])
        rows.append({"setting": name, "loop_images_s": images_per_s(loop, sizes.train),
                     "plain_images_s": images_per_s(plain, sizes.train)})  # fmt: skip
        rows[-1]["ratio"] = rows[-1]["loop_images_s"] / rows[-1]["plain_images_s"]
        print(f"  {name:22s} loop {rows[-1]['loop_images_s']:10.0f} img/s  plain {rows[-1]['plain_images_s']:10.0f} img/s  "
              f"ratio {rows[-1]['ratio']:.2f}x", flush=True)  # fmt: skip
    return rows


def _space(root: Path, dense: Path, sizes: Sizes, resources: dict[str, Any], trials: int) -> dict[str, Any]:
    return {
        "name": "gpu-bench", "model": "resnet20", "dataset": "cifar10", "data_root": str(root), "dense": str(dense),
        "trials": 0, "search": "random", "epochs": sizes.sweep_epochs, "lr": 0.05, "batch_size": sizes.batch,
        "precision": "bf16" if torch.cuda.is_available() else "fp32", "channels_last": torch.cuda.is_available(),
        "resources": resources, "methods": {"irregular": {"*": 0.5}},
        "points": [{"method": "irregular", "ratios": {"*": 0.5}, "label": f"p{i}"} for i in range(trials)],
    }  # fmt: skip


def _sweep(space_raw: dict[str, Any], storage: Path, name: str, address: str) -> tuple[Any, float, Any]:
    """(trials frame, wall seconds, concurrency) of one sweep on the running Ray."""
    import ray

    from raysweep.results.collect import trials_frame
    from raysweep.space import load_space
    from raysweep.sweep.driver import run_sweep
    from raysweep.sweep.executors import get_executor, max_concurrent_trials

    space = load_space(space_raw)
    concurrency = max_concurrent_trials(get_executor(space), ray.cluster_resources())
    start = time.perf_counter()
    result = run_sweep(space, storage, name, address=address)
    wall = time.perf_counter() - start
    exp_dir = getattr(result, "exp_dir", result)  # SweepRun, or the folder itself
    return trials_frame(Path(exp_dir)), wall, concurrency


def most_at_once(frame) -> int:
    """The most trials whose [end - wall_s, end] intervals overlap."""
    events = sorted([(e - w, 1) for e, w in zip(frame["finished_at"], frame["wall_s"])] + [(e, -1) for e in frame["finished_at"]])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def sharing(root: Path, dense: Path, sizes: Sizes, storage: Path, address: str) -> list[dict[str, Any]]:
    rows = []
    for per_gpu in sizes.shares:
        resources = {"workers_per_trial": 1, "cpus_per_worker": 1, "gpus_per_worker": 1 / per_gpu, "executor": "inprocess"}
        frame, wall, concurrency = _sweep(_space(root, dense, sizes, resources, sizes.sweep_trials), storage, f"share{per_gpu}", address)
        done = int((frame["status"] == "TERMINATED").sum())
        rows.append({"trials_per_gpu": per_gpu, "gpus_per_worker": 1 / per_gpu, "concurrency": concurrency,
                     "most_at_once": most_at_once(frame), "planned": sizes.sweep_trials, "trials": done, "wall_s": wall,
                     "trials_per_hour": done / wall * 3600,
                     "accuracy_mean": float(frame["accuracy"].mean())})  # fmt: skip
        r = rows[-1]
        print(f"  {per_gpu} per GPU: concurrency {r['concurrency']}, at once {r['most_at_once']}, {r['trials']} trials in "
              f"{r['wall_s']:.1f} s = {r['trials_per_hour']:.0f} trials/hour", flush=True)  # fmt: skip
    return rows


def nccl(root: Path, dense: Path, sizes: Sizes, storage: Path, address: str, smoke: bool) -> dict[str, Any]:
    gpus = torch.cuda.device_count()
    if not smoke and gpus < 2:
        reason = f"{gpus} GPU(s): a 2-worker NCCL trial needs two (NCCL refuses two ranks on one device)"
        print(f"  skipped: {reason}", flush=True)
        return {"skipped": reason}
    resources = {"workers_per_trial": 2, "cpus_per_worker": 1, "gpus_per_worker": 0 if smoke else 1, "executor": "pool"}
    frame, wall, _ = _sweep(_space(root, dense, sizes, resources, 1), storage, "nccl", address)
    row = {"backend": "gloo (smoke)" if smoke else "nccl", "status": str(frame["status"].iloc[0]),
           "accuracy": float(frame["accuracy"].iloc[0]), "wall_s": wall}  # fmt: skip
    print(f"  2-worker trial ({row['backend']}): {row['status']}, accuracy {row['accuracy']:.3f}, {wall:.1f} s", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="every part on the CPU, tiny (the test)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sizes, device = (SMOKE, "cpu") if args.smoke else (REAL, "cuda")
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA GPU here: run with --smoke to check the script on a CPU", file=sys.stderr)
        return 2
    import ray

    from raysweep import ray_env

    figures: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke)"}
    with tempfile.TemporaryDirectory() as tmp:
        root = write_fake_cifar(Path(tmp) / "cifar", sizes.train, max(sizes.train // 5, 32))
        sweep_root = write_fake_cifar(Path(tmp) / "cifar-sweep", sizes.sweep_train, max(sizes.sweep_train // 5, 32))
        dense = Path(tmp) / "dense.pt"
        from raysweep.models import create_model

        torch.save(create_model("resnet20", num_classes=10, dataset="cifar10").state_dict(), dense)
        started = time.perf_counter()
        print(f"throughput on {figures['device']}", flush=True)
        figures["throughput"] = throughput(root, sizes, device)
        figures["seconds"] = {"throughput": time.perf_counter() - started}
        ray_env.apply_ray_env_defaults()
        gpus = 1 if args.smoke else None  # smoke: one declared GPU, so GPU shares schedule on a CPU machine
        ray.init(num_cpus=sizes.cpus, num_gpus=gpus, include_dashboard=True, dashboard_host="127.0.0.1",
                 log_to_driver=False, configure_logging=False)  # fmt: skip
        try:
            address = ray.get_runtime_context().gcs_address
            print(f"trials per GPU (cluster: {ray.cluster_resources().get('GPU', 0):g} GPU)", flush=True)
            figures["sharing"] = sharing(sweep_root, dense, sizes, Path(tmp) / "sweeps", address)
            figures["seconds"]["sharing"] = time.perf_counter() - started - sum(figures["seconds"].values())
            print("2-worker trial in the pool", flush=True)
            figures["nccl"] = nccl(sweep_root, dense, sizes, Path(tmp) / "sweeps", address, args.smoke)
            figures["seconds"]["nccl"] = time.perf_counter() - started - sum(figures["seconds"].values())
        finally:
            ray.shutdown()
    text = json.dumps(figures, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
