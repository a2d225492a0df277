"""The sweep end to end on the embedded digits data: files, fronts, exact zeros, failure, resume."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

import pruners
from helpers import tiny_space, write_space
from raysweep import report, search
from raysweep.models import create_model

pytestmark = pytest.mark.ray

SPACE = tiny_space(
    "tiny", dense="train", dense_epochs=6, trials=4, seed=1,
    methods={
        "irregular": {"*": {"uniform": [0.3, 0.95]}, "classifier.2.weight": 0.5},
        "filter": {"features.*": {"uniform": [0.1, 0.5]}, "classifier.2.weight": 0.0},
        "nm": {"*": {"choice": ["m4n2", "m8n2"]}, "features.0.weight": 0.0},
    },
    points=[{"method": "irregular", "ratios": {"*": 0.6}}],
)  # fmt: skip
TRIAL_COLUMNS = [
    "trial_id", "status", "method", "schedule", "accuracy", "top5", "sparsity", "sparsity_conv",
    "sparsity_seed", "flops_ratio", "params_remaining", "epochs", "wall_s", "train_s", "checkpoint",
]


@pytest.fixture(scope="module")
def resumed_sweep(ray_local, tmp_path_factory, checkpointed_epochs):
    """A sweep whose driver is killed after two trials, then resumed to the end."""
    root = tmp_path_factory.mktemp("sweep")
    space_file = write_space(root, SPACE)
    storage = root / "results"
    address = ray_local.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "raysweep.search", "--space", str(space_file), "--storage", str(storage), "--address", address, "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    exp = storage / "tiny"
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None and len(checkpointed_epochs(exp)) < 2:
        time.sleep(0.5)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (exp / "trials.csv").exists()
    time.sleep(2)  # let Ray notice the driver is gone and free its trials' workers
    assert search.main(["--space", str(space_file), "--storage", str(storage), "--resume", "-q"]) == 0
    return exp


def test_every_trial_appears_once_with_the_contract_columns(resumed_sweep):
    trials = pd.read_csv(resumed_sweep / "trials.csv")
    for column in TRIAL_COLUMNS:
        assert column in trials.columns, column
    assert len(trials) == SPACE["trials"] + len(SPACE["points"])
    assert trials["trial_id"].is_unique
    assert (trials["status"] == "TERMINATED").all()
    assert set(trials["method"]) <= {"irregular", "filter", "nm"}
    assert any(c.startswith("ratio/features.3.weight") for c in trials.columns)
    for column in ("accuracy", "sparsity", "flops_ratio"):
        assert trials[column].between(0, 1).all()
    for name in ("pareto.csv", "report.md", "report.html", "pareto.png"):
        assert (resumed_sweep / name).is_file()


def _dominates(a, b) -> bool:
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def test_pareto_csv_is_exactly_the_non_dominated_subset(resumed_sweep):
    trials = pd.read_csv(resumed_sweep / "trials.csv")
    pareto = pd.read_csv(resumed_sweep / "pareto.csv")
    groups = {"all": trials, **{m: g for m, g in trials.groupby("method")}}
    for front, group in groups.items():
        points = {row.trial_id: (row.accuracy, row.sparsity) for row in group.itertuples()}
        expected = {t for t, p in points.items() if not any(_dominates(q, p) for q in points.values())}
        assert set(pareto.loc[pareto["front"] == front, "trial_id"]) == expected, front


def test_each_checkpoint_has_exactly_the_configured_zeros(resumed_sweep):
    trials = pd.read_csv(resumed_sweep / "trials.csv")
    for row in trials.to_dict("records"):
        model = create_model("digits_cnn", dataset="digits")
        state = torch.load(row["checkpoint"], map_location="cpu", weights_only=True)
        pruners.load_masked_state_dict(model, state["model"])
        zeros = total = 0
        for name in pruners.prunable_parameters(model):
            w = model.get_submodule(name.rsplit(".", 1)[0]).weight
            target = row.get(f"ratio/{name}")
            if row["method"] == "irregular":
                assert int((w == 0).sum()) == int(float(target) * w.numel() + 0.5), (row["trial_id"], name)
            if row["method"] == "nm" and isinstance(target, str) and target.startswith("m"):
                m, n = pruners.parse_nm(target)
                assert int((w != 0).sum()) == w.numel() // m * n, (row["trial_id"], name)
            zeros += int((w == 0).sum())
            total += w.numel()
        assert row["sparsity"] == pytest.approx(zeros / total, abs=1e-12)


def test_report_cli_rebuilds_the_files(resumed_sweep):
    for name in ("pareto.csv", "report.md", "pareto.png"):
        (resumed_sweep / name).unlink()
    assert report.main([str(resumed_sweep)]) == 0
    assert (resumed_sweep / "pareto.png").stat().st_size > 1000
    assert "Pareto" in (resumed_sweep / "report.md").read_text() or "front" in (resumed_sweep / "report.md").read_text()


def test_a_failing_trial_is_reported_and_the_others_finish(resumed_sweep, tmp_path):
    dense = next((resumed_sweep.parent / "dense").glob("*/final.pt"))  # trained once, reused
    space = {
        **SPACE, "name": "nan", "search": "grid", "trials": 1, "points": [], "dense": str(dense),
        "lr": {"choice": [0.01, 1.0e12]},  # the second diverges: NaN loss
        "methods": {"irregular": {"*": 0.5}},
    }
    space_file = write_space(tmp_path, space)
    assert search.main(["--space", str(space_file), "--storage", str(tmp_path), "-q"]) == 0
    trials = pd.read_csv(tmp_path / "nan" / "trials.csv")
    assert sorted(trials["status"]) == ["ERROR", "TERMINATED"]
    failed = trials[trials["status"] == "ERROR"].iloc[0]
    assert isinstance(failed["error"], str) and failed["error"]
    text = (tmp_path / "nan" / "report.md").read_text()
    assert failed["trial_id"] in text
    assert set(pd.read_csv(tmp_path / "nan" / "pareto.csv")["trial_id"]) == {trials.loc[trials["status"] == "TERMINATED", "trial_id"].iloc[0]}


def test_a_sweep_that_cannot_fit_the_cluster_fails_before_dense_training(ray_local, tmp_path, capsys):
    """Connected to a 2-CPU cluster, 3 workers x 1 CPU cannot run: exit 2 right after
    connecting, no dense model trained, the storage untouched."""
    storage = tmp_path / "results"
    address = ray_local.get_runtime_context().gcs_address
    args = ["--storage", str(storage), "--name", "big", "--address", address,
            "--set", "resources.workers_per_trial=3", "--set", "resources.cpus_per_worker=1", "-q"]  # fmt: skip
    assert search.main(args) == 2
    assert "one trial needs 3 worker(s) x 1 CPU = 3 CPU" in capsys.readouterr().err
    assert not storage.exists()
