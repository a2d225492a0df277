"""Single runs on Ray Train (issue: raysweep.train / raysweep.prune), on the embedded digits data."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import pandas as pd
import pytest
import torch

import pruners
from raysweep import prune, train
from raysweep.models import create_model

pytestmark = pytest.mark.ray


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def _final_model(run_dir):
    model = create_model("digits_cnn", dataset="digits")
    state = torch.load(run_dir / "final.pt", map_location="cpu", weights_only=True)
    pruners.load_masked_state_dict(model, state["model"])
    return model


def test_train_writes_the_run_directory(tmp_path):
    assert train.main(["--epochs", "2", "--output", str(tmp_path), "--name", "dense", "--print_freq", "0", "-q"]) == 0
    run = tmp_path / "dense"
    for name in ("config.json", "metrics.csv", "final.pt", "best.pt", "layers.csv", "run.log"):
        assert (run / name).is_file(), name
    history = pd.read_csv(run / "metrics.csv")
    assert list(history["epoch"]) == [0, 1]
    assert {"accuracy", "top5", "val_loss", "sparsity"} <= set(history.columns)
    assert (history["sparsity"] == 0.0).all()
    assert _summary(run)["accuracy"] == history["accuracy"].iloc[-1]
    assert "Acc@1" in (run / "run.log").read_text()


def test_irregular_prune_leaves_exact_zeros(dense_digits, tmp_path):
    """How close to dense it stays is a training outcome: tests/test_outcomes.py."""
    rc = prune.main([
        "--prune_type", "irregular", "--ratio", "0.9", "--weight_file", str(dense_digits / "final.pt"),
        "--epochs", "3", "--lr", "0.05", "--schedule", "agp", "--agp_end", "1",
        "--output", str(tmp_path), "--name", "irr", "--print_freq", "0", "-q",
    ])
    assert rc == 0
    run = tmp_path / "irr"
    s = _summary(run)
    model = _final_model(run)
    masks = pruners.masked_parameters(model)
    total = kept = 0
    for name, wm in masks.items():
        w = model.get_submodule(name.rsplit(".", 1)[0]).weight  # effective (masked) weight
        expected_removed = int(0.9 * w.numel() + 0.5)
        assert int((w == 0).sum()) == expected_removed, name
        assert int((~wm.mask).sum()) == expected_removed, name
        total += w.numel()
        kept += int((w != 0).sum())
    assert s["sparsity"] == pytest.approx(1 - kept / total, abs=1e-12)
    assert abs(s["sparsity"] - 0.9) < 1e-3


def test_prune_runs_end_to_end_on_ray_train(dense_digits, tmp_path):
    """The command on Ray Train writes the run folder; each method's layer table in process is
    tests/test_prune_runs.py (the Ray path does not depend on the method)."""
    rc = prune.main([
        "--prune_type", "nm", "--ratio", "m4n2", "--weight_file", str(dense_digits / "final.pt"),
        "--epochs", "1", "--output", str(tmp_path), "--name", "nm", "--print_freq", "0", "-q",
    ])
    assert rc == 0
    for name in ("config.json", "summary.json", "metrics.csv", "final.pt"):
        assert (tmp_path / "nm" / name).is_file(), name
    layers = pd.read_csv(tmp_path / "nm" / "layers.csv").set_index("name")
    # the first conv has 1 input channel: left dense and reported as skipped
    assert layers.loc["features.0.weight", "sparsity"] == 0.0
    assert isinstance(layers.loc["features.0.weight", "skipped"], str)
    assert layers.loc["features.3.weight", "sparsity"] == 0.5
    model = _final_model(tmp_path / "nm")
    w = model.features[3].weight.detach().permute(0, 2, 3, 1).reshape(-1, 4)  # groups of 4 input channels
    assert int((w != 0).sum(1).max()) <= 2  # fine-tuned through Ray, the 2:4 structure held


def test_two_worker_ddp_keeps_ranks_identical(dense_digits, tmp_path):
    rc = prune.main([
        "--prune_type", "irregular", "--ratio", "0.5", "--weight_file", str(dense_digits / "final.pt"),
        "--epochs", "2", "--workers", "2", "--output", str(tmp_path), "--name", "ddp", "--print_freq", "0", "-q",
        "--prune_freq", "1", "--retrain_epoch", "1",  # regrow at epoch 0, masks frozen from epoch 1
    ])
    assert rc == 0
    history = pd.read_csv(tmp_path / "ddp" / "metrics.csv")
    assert (history["world_size"] == 2).all()
    assert (history["rank_weight_spread"] == 0.0).all()
    # the best checkpoint comes only from epochs at the final sparsity with frozen masks
    assert list(history["final"]) == [False, True]
    best = torch.load(tmp_path / "ddp" / "best.pt", map_location="cpu", weights_only=True)
    assert best["epoch"] == 1


def test_killed_worker_is_restarted_and_run_completes(ray_local, dense_digits, tmp_path):
    from ray.util.state import list_actors

    args = [
        "--prune_type", "irregular", "--ratio", "0.8", "--weight_file", str(dense_digits / "final.pt"),
        "--epochs", "6", "--schedule", "agp", "--agp_end", "3",  # gradual: dense at epoch 0, 0.8 from epoch 3
        "--output", str(tmp_path), "--name", "kill", "--print_freq", "0", "-q",
    ]
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("rc", prune.main(args)))
    runner.start()
    run = tmp_path / "kill"
    killed = None
    deadline = time.time() + 240
    while time.time() < deadline and killed is None and runner.is_alive():
        if list(run.glob("checkpoint_epoch*")):
            alive = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
            for actor in list_actors(address=ray_local.get_runtime_context().gcs_address, filters=alive):
                os.kill(actor.pid, signal.SIGKILL)
                killed = actor.pid
        time.sleep(0.2)
    runner.join(timeout=300)
    assert killed is not None, "never saw a worker to kill"
    assert outcome.get("rc") == 0
    history = pd.read_csv(run / "metrics.csv")
    assert list(history["epoch"]) == list(range(6))
    assert history["sparsity"].iloc[0] == 0.0 and history["sparsity"].is_monotonic_increasing
    model = _final_model(run)
    for name, wm in pruners.masked_parameters(model).items():
        w = model.get_submodule(name.rsplit(".", 1)[0]).weight
        assert int((w == 0).sum()) == int(0.8 * w.numel() + 0.5)


def test_resume_continues_from_the_last_checkpoint(dense_digits, tmp_path):
    base = ["--weight_file", str(dense_digits / "final.pt"), "--output", str(tmp_path), "--print_freq", "0", "-q"]
    assert prune.main(["--prune_type", "filter", "--ratio", "0.25", "--epochs", "1", "--name", "res", *base]) == 0
    assert prune.main(["--resume", str(tmp_path / "res"), "--epochs", "2", "-q"]) == 0
    history = pd.read_csv(tmp_path / "res" / "metrics.csv")
    assert list(history["epoch"]) == [0, 1]
    assert "resumed from the checkpoint of epoch 0" in (tmp_path / "res" / "run.log").read_text()
    assert _summary(tmp_path / "res")["epoch"] == 1
