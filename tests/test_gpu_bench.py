"""benchmarks/gpu_bench.py in its CPU smoke mode: every part runs, and on a Ray with one declared
GPU two trials of gpus_per_worker 0.5 share it at once (1 and 4 per GPU: the real run's; the
arithmetic for any share: tests/test_gpu_share.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.ray
def test_gpu_bench_runs_in_smoke_mode_and_shares_the_declared_gpu(tmp_path):
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_bench.py", "--smoke", "--out", str(out)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:]
    figures = json.loads(out.read_text())
    assert [r["setting"] for r in figures["throughput"]] == ["fp32", "bf16", "bf16 + channels_last"]
    assert all(r["loop_images_s"] > 0 and r["plain_images_s"] > 0 for r in figures["throughput"])
    sharing = figures["sharing"]
    assert [(r["trials_per_gpu"], r["concurrency"]) for r in sharing] == [(2, 2)]  # 1 GPU / share
    assert all(r["trials"] == r["planned"] == 2 and r["trials_per_hour"] > 0 for r in sharing)
    # Two trials of ~4 s each, launched about a second apart on the one declared GPU: they overlap
    # (a whole GPU per trial would run them one after the other: 1).
    assert sharing[0]["most_at_once"] == 2
    assert figures["nccl"]["status"] == "TERMINATED" and figures["nccl"]["backend"] == "gloo (smoke)"
