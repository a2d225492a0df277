"""CPU images/s of raysweep's training loop: against a plain PyTorch loop, against the loop of an
older commit, and with each precision / channels_last / compile setting.

Every row runs in a fresh process (the same imports, the same memory) on one thread, as a sweep
trial with cpus_per_worker 1 does; rows are interleaved over ``--repeats`` rounds so a burst of
load from other processes moves one sample, not a whole row, and each figure is the median.
images/s = train images / median epoch time (train + evaluation + the loop's per-epoch report
and checkpoint) over epochs 1.. (epoch 0 pays set-up, warm-up and any compilation; its time is
the ``first epoch s`` column); images/CPU-s the same over the process's CPU seconds, which other
processes on a shared machine move much less than the wall clock (the ratios use it).

Sections (``--sections``):
  plain    the CIFAR-shaped workload (``resnet20``, random CIFAR-like uint8 files in torchvision's
           layout, random crop with padding 4 and flip on): raysweep's loop vs a hand-written loop
           on the same files, model, optimizer and augmentation, textbook style (torchvision
           per-sample transforms through a DataLoader) and hand-cut tensor batches, each layout
           (raysweep's default is channels_last). Target >= 1.0x.
  old      the loop of ``--old-ref`` (a commit, run from ``git archive``) vs this one, on the CIFAR
           workload and on the default sweep's (digits_cnn, irregular masks).
  options  fp32, channels_last, bf16, bf16 + channels_last, compile: on the CIFAR workload (dense)
           and on digits_cnn with irregular 0.9 masks (a default-sweep trial).

    python benchmarks/bench_loop_speed.py [--sections plain old options] [--repeats 2] [--train 1024]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from loop_workload import images_per_s, loop_run, plain_run, write_fake_cifar

REPO = Path(__file__).resolve().parents[1]
DIGITS_TRAIN = 1437
MASKED = {"method": "irregular", "targets": {"*": 0.9}}
SETTINGS = {  # each explicit, whatever the defaults are
    "fp32": {"precision": "fp32", "channels_last": False, "compile": False},
    "channels_last": {"precision": "fp32", "channels_last": True, "compile": False},
    "bf16": {"precision": "bf16", "channels_last": False, "compile": False},
    "bf16 + channels_last": {"precision": "bf16", "channels_last": True, "compile": False},
    "compile": {"precision": "fp32", "channels_last": False, "compile": True},
    "compile + channels_last": {"precision": "fp32", "channels_last": True, "compile": True},
}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One row, in this (fresh) process."""
    root = Path(spec["root"]) if spec.get("root") else None
    common = dict(epochs=spec["epochs"], batch=spec["batch"], threads=spec["threads"])
    if spec["kind"] == "plain":
        return plain_run(root, spec["style"], **common, channels_last=spec.get("channels_last", False), precision=spec.get("precision", "fp32"))
    return loop_run(root, **common, model_name=spec["model"], dataset=spec["dataset"], options=spec.get("options"))


def run_row(spec: dict[str, Any], old_tree: Path | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    if spec.get("old"):
        env["PYTHONPATH"] = str(old_tree)  # the older commit's raysweep and pruners come first
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"row {spec['label']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def old_checkout(ref: str, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", ref], cwd=REPO, stdout=subprocess.PIPE, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def measure(rows: list[dict[str, Any]], repeats: int, old_tree: Path | None) -> dict[str, dict[str, Any]]:
    """Each row ``repeats`` times, interleaved; per row the median images/s and first epoch."""
    got: dict[str, list[dict[str, Any]]] = {r["label"]: [] for r in rows}
    for round_ in range(repeats):
        for row in rows:
            result = run_row(row, old_tree)
            got[row["label"]].append(result)
            rate, cpu_rate = images_per_s(result, row["train_images"]), images_per_s(result, row["train_images"], "epoch_cpu_s")
            print(f"  round {round_ + 1}: {row['label']:44s} {rate:8.1f} img/s {cpu_rate:8.1f} img/CPU-s "
                  f"(epochs {[round(t, 2) for t in result['epoch_s']]})", flush=True)  # fmt: skip
    out = {}
    for row in rows:
        results = got[row["label"]]
        out[row["label"]] = {
            "rate": statistics.median(images_per_s(r, row["train_images"]) for r in results),
            "cpu_rate": statistics.median(images_per_s(r, row["train_images"], "epoch_cpu_s") for r in results),
            "first": statistics.median(r["epoch_s"][0] for r in results),
            "accuracy": results[-1]["accuracy"],
        }
    return out


def table(title: str, figures: dict[str, dict[str, Any]], reference: str) -> None:
    print(f"\n{title}")
    ref = figures[reference]
    print(f"{'row':46s} {'images/s':>9s} {'images/CPU-s':>13s} {'ratio (CPU-s)':>14s} {'ratio (wall)':>13s} {'first epoch s':>14s}")
    for label, f in figures.items():
        print(f"{label:46s} {f['rate']:9.1f} {f['cpu_rate']:13.1f} {f['cpu_rate'] / ref['cpu_rate']:13.2f}x "
              f"{f['rate'] / ref['rate']:12.2f}x {f['first']:14.2f}")  # fmt: skip
    print(f"(ratios against: {reference})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--sections", nargs="+", default=["plain", "old", "options"], choices=["plain", "old", "options"])
    p.add_argument("--train", type=int, default=1024, help="CIFAR-shaped train images (val: a quarter)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--old-ref", default="5e5bacd", help="the commit whose loop is 'today's loop'")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS), help="options rows")
    p.add_argument("--workloads", nargs="+", default=["cifar", "digits"], choices=["cifar", "digits"], help="options workloads")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = write_fake_cifar(Path(tmp) / "cifar", args.train, args.train // 4)
        small = write_fake_cifar(Path(tmp) / "cifar-small", 256, 64)
        old_tree = old_checkout(args.old_ref, Path(tmp) / "old") if "old" in args.sections else None
        base = dict(batch=args.batch, threads=args.threads)
        cifar = dict(base, root=str(root), epochs=args.epochs, train_images=args.train, model="resnet20", dataset="cifar10")
        digits = dict(base, root=None, epochs=8, train_images=DIGITS_TRAIN, model="digits_cnn", dataset="digits")
        print(f"load average before: {os.getloadavg()}", flush=True)
        if "plain" in args.sections:
            rows = [dict(cifar, kind="loop", label="raysweep loop (defaults)"),
                    dict(cifar, kind="plain", style="loader", label="plain loop, per-sample DataLoader"),
                    dict(cifar, kind="plain", style="tensor", label="plain loop, hand-cut tensor batches"),
                    dict(cifar, kind="plain", style="tensor", channels_last=True, label="plain loop, tensor batches, channels_last"),
                    dict(cifar, kind="loop", options=SETTINGS["fp32"], label="raysweep loop, channels_last off")]  # fmt: skip
            table("CIFAR-shaped, resnet20, augmentation on, 1 thread", measure(rows, args.repeats, None), "plain loop, per-sample DataLoader")
        if "old" in args.sections:
            rows = [dict(cifar, kind="loop", old=True, label=f"cifar: loop of {args.old_ref}"),
                    dict(cifar, kind="loop", label="cifar: this loop (defaults)"),
                    dict(digits, kind="loop", old=True, options=MASKED, label=f"digits, irregular 0.9: loop of {args.old_ref}"),
                    dict(digits, kind="loop", options=MASKED, label="digits, irregular 0.9: this loop")]  # fmt: skip
            figures = measure(rows, args.repeats, old_tree)
            table("older loop vs this one (cifar rows)", dict(list(figures.items())[:2]), f"cifar: loop of {args.old_ref}")
            table("older loop vs this one (digits rows)", dict(list(figures.items())[2:]), f"digits, irregular 0.9: loop of {args.old_ref}")
        if "options" in args.sections:
            small_cifar = dict(cifar, root=str(small), train_images=256, epochs=3)
            workloads = {"cifar": ("CIFAR-shaped resnet20 (256 images)", small_cifar, {}), "digits": ("digits_cnn, irregular 0.9", digits, MASKED)}
            for key in args.workloads:
                name, workload, extra = workloads[key]
                rows = [dict(workload, kind="loop", options={**extra, **SETTINGS[label]}, label=label) for label in args.settings]
                table(f"options: {name}", measure(rows, args.repeats, None), args.settings[0])
        print(f"\nload average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
