"""Fine-tune throughput: a plain PyTorch loop vs raysweep's per-worker loop on Ray Train.

Why: every sweep trial is one Ray Train run of ``raysweep.loop.train_loop_per_worker``; what
that costs over the same training written as a plain loop, once running and at start-up, is
what every trial pays. Target: the 1-worker Ray loop within 10% of the plain loop's images/s
once running (both on one thread: the worker sets torch threads = cpus_per_worker = 1).

Rows, same model, data, global batch, epochs, optimizer (SGD momentum, weight decay):
  plain   one process, no Ray, ``torch.set_num_threads(workers x cpus_per_worker)``; one row
          per thread count the Ray rows need, so each Ray row is compared at equal cores.
  ray     ``raysweep.trial.runner.build_trainer(RunConfig(...)).fit()`` with N workers (N > 1: DDP,
          gloo), the global batch split across them.

images/s is the training set over one epoch's time, from epochs 1..E-1 (epoch 0 is warm-up):
  train+eval  train set / median (train + eval time per epoch): the plain loop's timers, and the
              Ray run's ``train_s`` from ``history`` in its final checkpoint (cumulative
              train+eval seconds, measured in rank 0).
  wall        train set / (mean time between epoch reports, first to last): also pays the
              per-epoch sparsity report, checkpoint save and ``ray.train.report``. Ray's report
              times are taken by a callback on the Train controller, which polls its workers
              every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (raysweep sets 0.2 s): one spacing carries
              that granularity, the mean over E-1 of them a 1/(E-1) share. Plain: its median
              epoch time, eval included (it reports nothing).
startup s   plain: building data and model. Ray: ``fit()`` call to the first epoch's report
            minus epoch 0's train+eval time (worker group, imports, data, model, DDP setup);
            split below the table at the moment every worker entered the training function.
cpu s       process CPU seconds of the training code: plain from building data and model to the
            end; Ray summed over workers from entering raysweep's loop function to its return (data,
            model, epochs, reports): less sensitive to a busy machine than the wall-clock rates.
nice        the niceness of the process that trains (Ray's workers: RAY_worker_niceness).

    python benchmarks/bench_throughput.py [--epochs 11] [--workers 1,2] [--batch-size 128]
    python benchmarks/bench_throughput.py --model vgg16 --dataset fake-cifar --train-size 512 --val-size 256 --epochs 3
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import pruners
from raysweep.config import RunConfig
from raysweep.data import DatasetInfo, build_datasets
from raysweep.models import create_model

FAKE_CIFAR = "fake-cifar"


# ---------------------------------------------------------------- fake CIFAR (benchmark only)


def register_fake_cifar(train_size: int, val_size: int) -> None:
    """Register ``fake-cifar``: seeded random 3x32x32 tensors, 10 classes, no files.

    Called in the driver and again inside each Ray worker (see ``worker_fn``): the registry
    is a module-level dict, so a registration in the driver does not reach worker processes.
    The registries are looked up through their modules here: a dict imported into this script
    would be pickled by value with the function and the worker would fill a copy.
    """
    import raysweep.data
    import raysweep.models

    def build(root, augment) -> tuple:
        gen = torch.Generator().manual_seed(0)

        def tensors(n: int) -> TensorDataset:
            return TensorDataset(torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen))

        info = DatasetInfo(FAKE_CIFAR, 10, (3, 32, 32), "cifar", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        return tensors(train_size), tensors(val_size), info

    raysweep.data.DATASETS[FAKE_CIFAR] = build
    raysweep.models.DATASET_FAMILY[FAKE_CIFAR] = "cifar"


def worker_fn(fake_sizes: Optional[tuple[int, int]], info_dir: str):
    """raysweep's per-worker loop, unchanged, with bookkeeping around it in each worker.

    It registers fake-cifar when asked, and writes to ``info_dir`` the worker's niceness (Ray
    starts worker processes at RAY_worker_niceness, 15 by default), the moment it entered this
    function, and the process CPU seconds the loop took.
    """

    def fn(config: dict) -> None:
        import ray.train

        from raysweep.trial.runner import train_loop_per_worker

        if fake_sizes is not None:
            register_fake_cifar(*fake_sizes)
        rank = ray.train.get_context().get_world_rank()
        with open(os.path.join(info_dir, f"worker-{os.getpid()}-rank{rank}.json"), "w") as fh:
            json.dump({"rank": rank, "nice": os.nice(0), "pid": os.getpid(), "t": time.time()}, fh)
        cpu0 = time.process_time()
        train_loop_per_worker(config)
        with open(os.path.join(info_dir, f"cpu-rank{rank}.json"), "w") as fh:
            json.dump({"rank": rank, "cpu_s": time.process_time() - cpu0}, fh)

    return fn


# ---------------------------------------------------------------- plain PyTorch


@dataclass
class Row:
    mode: str
    workers: int
    threads: int
    epochs: list[dict[str, float]] = field(default_factory=list)  # per epoch: train_eval_s, wall_s (, train_s)
    startup_s: float = float("nan")
    first_report_s: float = float("nan")
    total_s: float = float("nan")
    train_images: int = 0
    accuracy: float = float("nan")
    cpu_s: float = float("nan")  # process CPU seconds from building data/model to the end (Ray: all workers)
    to_loop_s: float = float("nan")  # Ray: fit() call until every worker is in the training function
    nice: list[int] = field(default_factory=lambda: [os.nice(0)])  # process niceness (Ray: its workers')

    def rate(self, key: str) -> float:
        """Train images per second from the median epoch time of epochs 1..E-1 (a median: a
        burst of load from other processes moves one epoch, not the figure)."""
        seconds = statistics.median(e[key] for e in (self.epochs[1:] or self.epochs))
        return self.train_images / seconds if seconds > 0 else float("nan")


def plain_run(cfg: RunConfig, threads: int) -> Row:
    """The same fine-tune as the Ray loop, written as a plain single-process loop."""
    torch.set_num_threads(threads)
    t0, cpu0 = time.perf_counter(), time.process_time()
    torch.manual_seed(cfg.seed)
    train_ds, val_ds, info = build_datasets(cfg.dataset, cfg.data_root)
    model = create_model(cfg.model, num_classes=info.num_classes, dataset=cfg.dataset)
    if cfg.method:
        pruners.prepare(model, cfg.targets, cfg.method)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wd)
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True)
    val_loader = DataLoader(val_ds, batch_size=cfg.batch_size)
    row = Row("plain", 0, threads, startup_s=time.perf_counter() - t0, train_images=len(train_ds))
    for _ in range(cfg.epochs):
        start = time.perf_counter()
        model.train()
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            loss.item()
        trained = time.perf_counter()
        model.eval()
        correct = count = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += (model(x).argmax(1) == y).sum().item()
                count += len(y)
        end = time.perf_counter()
        row.epochs.append({"train_s": trained - start, "train_eval_s": end - start, "wall_s": end - start})
        row.accuracy = correct / count
    row.total_s = time.perf_counter() - t0
    row.cpu_s = time.process_time() - cpu0
    if row.epochs:
        row.first_report_s = row.startup_s + row.epochs[0]["wall_s"]
    return row


# ---------------------------------------------------------------- Ray Train


def _report_times_callback(path: str):
    import ray.train

    class ReportTimes(ray.train.UserCallback):
        """Appends (wall clock, rank-0 metrics) per report to a file; runs in the controller."""

        def after_report(self, run_context, metrics, checkpoint) -> None:
            with open(path, "a") as fh:
                fh.write(json.dumps({"t": time.time(), "metrics": metrics[0] if metrics else {}}, default=str) + "\n")

    return ReportTimes()


def ray_run(cfg: RunConfig, storage: str, fake_sizes: Optional[tuple[int, int]]) -> Row:
    from raysweep.trial.checkpoint import CHECKPOINT_FILE, read_checkpoint
    from raysweep.trial.runner import build_trainer

    times_file = os.path.join(storage, f"report-times-w{cfg.workers}.jsonl")
    trainer = build_trainer(cfg, storage, f"bench-w{cfg.workers}", callbacks=[_report_times_callback(times_file)])
    info_dir = tempfile.mkdtemp(prefix=f"workers-w{cfg.workers}-", dir=storage)
    trainer.train_loop_per_worker = worker_fn(fake_sizes, info_dir)  # the same loop, see worker_fn
    t0 = time.time()
    result = trainer.fit()
    t1 = time.time()
    reports = [json.loads(line) for line in Path(times_file).read_text().splitlines()]
    history: list[dict[str, Any]] = []
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            history = read_checkpoint(Path(d) / CHECKPOINT_FILE).history
    if len(history) != cfg.epochs:  # fall back to the metrics the callback saw
        history = [r["metrics"] for r in reports]
    train_s = [h["train_s"] for h in history]  # cumulative train+eval seconds
    per_epoch = [b - a for a, b in zip([0.0] + train_s, train_s)]
    row = Row("ray", cfg.workers, cfg.workers * int(cfg.cpus_per_worker), total_s=t1 - t0)
    row.train_images = len(build_datasets(cfg.dataset, cfg.data_root)[0])
    row.first_report_s = reports[0]["t"] - t0 if reports else float("nan")
    row.startup_s = row.first_report_s - per_epoch[0] if per_epoch else float("nan")
    # Report times carry the controller's polling granularity: use their mean spacing over
    # epochs 1..E-1 (first to last report), where those errors cancel, for every later epoch.
    spacing = (reports[-1]["t"] - reports[0]["t"]) / (len(reports) - 1) if len(reports) > 1 else float("nan")
    for i, seconds in enumerate(per_epoch):
        row.epochs.append({"train_eval_s": seconds, "wall_s": spacing if i > 0 else seconds})
    row.accuracy = history[-1].get("accuracy", float("nan")) if history else float("nan")
    workers = [json.loads(p.read_text()) for p in Path(info_dir).glob("worker-*.json")]
    row.cpu_s = sum(json.loads(p.read_text())["cpu_s"] for p in Path(info_dir).glob("cpu-*.json"))
    row.nice = sorted({w["nice"] for w in workers})
    if workers:  # fit() -> the last worker entering the loop: controller, worker group, process group
        row.to_loop_s = max(w["t"] for w in workers) - t0
    return row


# ---------------------------------------------------------------- table


def _pct(value: float, base: float) -> str:
    return f"{(value / base - 1) * 100:+.1f}%" if base and math.isfinite(value) and math.isfinite(base) else "-"


def print_table(rows: list[Row]) -> None:
    plain = {r.threads: r for r in rows if r.mode == "plain"}
    print(f"{'mode':<6} {'workers':>7} {'threads':>7} {'img/s train+eval':>16} {'vs plain':>9} "
          f"{'img/s wall':>10} {'vs plain':>9} {'startup s':>9} {'1st report s':>12} {'total s':>8} {'cpu s':>6} "
          f"{'acc':>6} {'nice':>5}")
    for r in rows:
        te, wall = r.rate("train_eval_s"), r.rate("wall_s")
        base = plain.get(r.threads)
        vs_te = vs_wall = "-"
        if r.mode == "ray" and base is not None:
            vs_te, vs_wall = _pct(te, base.rate("train_eval_s")), _pct(wall, base.rate("wall_s"))
        workers = str(r.workers) if r.mode == "ray" else "-"
        print(f"{r.mode:<6} {workers:>7} {r.threads:>7} {te:16.0f} {vs_te:>9} {wall:10.0f} {vs_wall:>9} "
              f"{r.startup_s:9.2f} {r.first_report_s:12.2f} {r.total_s:8.2f} {r.cpu_s:6.2f} {r.accuracy:6.3f} {','.join(map(str, r.nice)):>5}")
    for r in rows:
        if r.mode == "plain":
            eps = r.epochs[1:] or r.epochs
            print(f"plain {r.threads} thread(s): train only {r.rate('train_s'):.0f} img/s; "
                  f"epoch 0 {r.epochs[0]['wall_s']:.2f} s, later epochs median {statistics.median(e['wall_s'] for e in eps):.2f} s")
        else:
            eps = r.epochs[1:] or r.epochs
            overhead = eps[0]["wall_s"] - statistics.mean(e["train_eval_s"] for e in eps)
            print(f"ray {r.workers} worker(s): start-up {r.startup_s:.2f} s = fit() to every worker in the loop function "
                  f"{r.to_loop_s:.2f} s + in the loop before epoch 0 (data, model, prepare_model) and the first "
                  f"report {r.startup_s - r.to_loop_s:.2f} s")
            print(f"ray {r.workers} worker(s): epoch 0 train+eval {r.epochs[0]['train_eval_s']:.2f} s; later epochs median "
                  f"train+eval {statistics.median(e['train_eval_s'] for e in eps):.2f} s (mean "
                  f"{statistics.mean(e['train_eval_s'] for e in eps):.2f} s), report-to-report mean {eps[0]['wall_s']:.2f} s "
                  f"(so ~{overhead:.2f} s/epoch outside train+eval: sparsity report, checkpoint, ray.train.report)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model", default="digits_cnn", help="registry name (vgg16 with --dataset fake-cifar)")
    parser.add_argument("--dataset", default="digits", help=f"digits (embedded) or {FAKE_CIFAR} (random tensors)")
    parser.add_argument("--train-size", type=int, default=2048, help=f"{FAKE_CIFAR} training images")
    parser.add_argument("--val-size", type=int, default=512, help=f"{FAKE_CIFAR} validation images")
    parser.add_argument("--epochs", type=int, default=11, help="epochs per run (images/s uses epochs 1..E-1)")
    parser.add_argument("--batch-size", type=int, default=128, help="GLOBAL batch, split across Ray workers")
    parser.add_argument("--workers", default="1,2", help="comma-separated Ray worker counts ('' or 0: no Ray)")
    parser.add_argument("--cpus-per-worker", type=int, default=1, help="Ray CPUs per worker = its torch threads")
    parser.add_argument("--method", default=None, help="prune method to fine-tune with masks (default: dense)")
    parser.add_argument("--target", default="0.8", help="target for --method, applied to every layer ('*')")
    parser.add_argument("--ray-niceness", type=int, default=None, help="set RAY_worker_niceness for the Ray "
                        "this script starts (Ray's default 15: on a busy machine its workers yield to every "
                        "niceness-0 process, the plain loop included)")
    parser.add_argument("--skip-plain", action="store_true", help="Ray rows only")
    parser.add_argument("--keep", action="store_true", help="keep the Ray run folders (printed)")
    args = parser.parse_args()

    workers = [int(w) for w in args.workers.split(",") if w.strip() and int(w) > 0]
    fake_sizes = (args.train_size, args.val_size) if args.dataset == FAKE_CIFAR else None
    if fake_sizes:
        register_fake_cifar(*fake_sizes)
    target: Any = args.target
    try:
        target = float(target)
    except ValueError:
        pass
    cfg = RunConfig(
        model=args.model, dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
        method=args.method, targets={"*": target} if args.method else {},
        cpus_per_worker=args.cpus_per_worker, print_freq=0, max_failures=0,
    )

    def load() -> str:
        return " ".join(open("/proc/loadavg").read().split()[:3]) if os.path.exists("/proc/loadavg") else "?"

    print(f"{cfg.model} on {cfg.dataset}, {cfg.epochs} epochs, global batch {cfg.batch_size}, "
          f"{cfg.method or 'dense'}, torch {torch.__version__}, {os.cpu_count()} cores; load average at start {load()}")
    rows: list[Row] = []
    if not args.skip_plain:
        for threads in sorted({max(1, w * args.cpus_per_worker) for w in workers} or {args.cpus_per_worker}):
            rows.append(plain_run(cfg, threads))

    if workers:
        import ray

        from raysweep.ray_env import init_ray

        if args.ray_niceness is not None:  # read by the raylet when it starts: before ray.init
            os.environ["RAY_worker_niceness"] = str(args.ray_niceness)
        storage = tempfile.mkdtemp(prefix="bench-throughput-")
        try:
            t0 = time.perf_counter()
            init_ray(num_cpus=max(os.cpu_count() or 1, max(workers) * args.cpus_per_worker))
            ray_init_s = time.perf_counter() - t0
            print(f"Ray init {ray_init_s:.2f} s ({ray.cluster_resources().get('CPU', 0):g} CPUs, "
                  f"RAY_worker_niceness={os.environ.get('RAY_worker_niceness', 'unset (15)')})")
            for w in workers:
                rows.append(ray_run(RunConfig(**{**cfg.to_dict(), "workers": w}), storage, fake_sizes))
        finally:
            ray.shutdown()
            if args.keep:
                print(f"Ray runs kept in {storage}")
            else:
                shutil.rmtree(storage, ignore_errors=True)

    print_table(rows)
    print(f"target: ray 1 worker within 10% of plain (1 thread) once running; load average at end {load()}")


if __name__ == "__main__":
    main()
