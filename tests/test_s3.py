"""Sweeps on an object store, against a real S3 API on loopback (moto's server mode, one per
session: tests/s3server.py): bad storage is one message and exit 2 before anything starts; a
checkpoint in a bucket is whole or absent; and one sweep, whose driver is SIGKILLed once a
trial has finished and which a second driver resumes from the bucket, serves every other check:
each trial exactly once, its files in the bucket, reports rebuilt there, a trial exported from
its URI, its MLflow runs read back from a local file store and its TensorBoard event files opened
(those two skip only where mlflow / tensorboardX is not installed). It also gives the figures of
docs/cluster.md (requests and bytes written per trial, time to resume; printed, and written as
JSON where RAYSWEEP_S3_FIGURES names a file).

The session's Ray runs the trials of both drivers: it starts after the S3 server
(tests/conftest.py), so its workers see the AWS variables.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time

import cloudpickle
import pandas as pd
import pytest
import torch

from helpers import tiny_space, write_space
from raysweep import export, report, search, storage
from raysweep.models import create_model
from raysweep.results.collect import load_sweep_info, trials_frame
from raysweep.sweep.guard import StorageGuard
from raysweep.trial.checkpoint import Checkpoint, CheckpointFolder, StorageError, read_checkpoint
from s3server import summarise

pytestmark = pytest.mark.ray

SPACE = tiny_space("s3", trials=3, epochs=2, seed=4)
# The sweep is also tracked where the optional packages are installed (the test extra has them).
MLFLOW, TENSORBOARD = (importlib.util.find_spec(m) is not None for m in ("mlflow", "tensorboardX"))
REPORTS = ("trials.csv", "pareto.csv", "report.md", "report.html", "pareto.png")
TRIAL_COLUMNS = ["trial_id", "status", "method", "schedule", "accuracy", "sparsity", "flops_ratio", "epochs", "checkpoint", "node_id"]


def _err(capsys) -> str:
    return capsys.readouterr().err


@pytest.mark.parametrize("case,expected", [
    ("scheme", "unknown storage scheme 'nosuch'"),
    ("bucket", "no bucket 'no-such-bucket'"),
    ("wrong", "refused the credentials"),
    ("missing", "no AWS credentials"),
])  # fmt: skip
def test_bad_storage_is_one_message_and_exit_2(s3, no_ray, monkeypatch, tmp_path, capsys, case, expected):
    uri = {"scheme": "nosuch://bucket/x", "bucket": "s3://no-such-bucket/x"}.get(case, s3.uri("bad"))
    if case == "wrong":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    if case == "missing":
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    assert search.main(["--storage", uri, "--name", "bad"]) == 2
    err = _err(capsys)
    assert err.count("error:") == 1 and expected in err, err
    assert not s3.keys("bad")  # nothing written


def test_an_endpoint_that_does_not_answer_fails_within_the_timeout(no_ray, monkeypatch, capsys):
    """It accepts connections and never answers: the check gives up after
    RAYSWEEP_STORAGE_TIMEOUT_S instead of the SDK's minutes of retries."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        monkeypatch.setenv("RAYSWEEP_STORAGE_TIMEOUT_S", "3")
        started = time.monotonic()
        assert search.main(["--storage", "s3://bucket/x", "--name", "x"]) == 2
        assert time.monotonic() - started < 30
    err = _err(capsys)
    assert "no answer from the storage" in err or "cannot reach" in err, err


def _state(epoch: int) -> Checkpoint:
    return Checkpoint(model={"w": torch.full((2,), float(epoch))}, epoch=epoch)


def test_a_checkpoint_in_a_bucket_is_whole_or_absent(s3):
    folder = CheckpointFolder(s3.uri("unit", "trials", "t1"))
    for epoch in range(3):
        folder.save(_state(epoch), epoch)
    assert [k for k in s3.keys("unit/trials/t1/") if not k.endswith("/")] == ["unit/trials/t1/checkpoint_epoch0002/checkpoint.pt"]
    # A writer killed before its upload was moved into place leaves only a temporary key.
    storage.write_bytes(s3.uri("unit", "trials", "t1", "checkpoint_epoch0003", ".checkpoint.pt.dead"), b"half")
    assert folder.latest().epoch == 2 and str(folder.newest_path()).endswith("checkpoint_epoch0002/checkpoint.pt")
    folder.save(_state(4), 4)
    assert [k for k in s3.keys("unit/trials/t1/") if not k.endswith("/")] == ["unit/trials/t1/checkpoint_epoch0004/checkpoint.pt"]
    assert torch.equal(read_checkpoint(folder.newest_path()).model["w"], torch.full((2,), 4.0))


def test_a_bucket_that_fails_under_the_trials_stops_the_sweep_after_three(s3, tmp_path, monkeypatch):
    """A write refused by the object store is a StorageError (not the trial's own failure), and
    the guard stops the sweep at the third, as for a local folder."""
    with pytest.raises(StorageError) as failed:
        CheckpointFolder("s3://no-such-bucket/x/trials/t1").save(_state(0), 0)
    assert "no-such-bucket" in str(failed.value) and failed.value.errno is None
    error_file = tmp_path / "error.pkl"
    error_file.write_bytes(cloudpickle.dumps(failed.value))

    class Trial:
        pickled_error_file = str(error_file)

    # Outside Tune's fit. An earlier in-process Tuner.fit of this session may have left its
    # SIGUSR1 handler installed; the guard would signal that instead of unwinding.
    monkeypatch.setattr(signal, "getsignal", lambda signum: signal.SIG_DFL)
    guard = StorageGuard()
    guard.on_trial_error(0, [], Trial())
    guard.on_trial_error(0, [], Trial())
    assert not guard.tripped
    with pytest.raises(KeyboardInterrupt):  # outside Tune's fit: the driver unwinds
        guard.on_trial_error(0, [], Trial())
    assert guard.tripped and isinstance(guard.error, StorageError)


def _finished(s3, prefix: str) -> set[str]:
    """Trials whose last epoch is in the bucket (listed with boto3, which the figures leave out)."""
    last = f"/checkpoint_epoch{SPACE['epochs'] - 1:04d}/checkpoint.pt"
    return {k.split("/")[-3] for k in s3.keys(prefix + "/trials/") if k.endswith(last)}


@contextlib.contextmanager
def _lines(logger: str):
    """The INFO lines of ``logger`` while the block runs."""
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    log, level = logging.getLogger(logger), logging.getLogger(logger).level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


@pytest.fixture(scope="module")
def resumed(ray_local, s3, dense_digits, tmp_path_factory):
    """The sweep on S3, the dense weights read from the bucket too: its driver, a process of its
    own, SIGKILLed once a trial has finished; resumed by a new driver from the bucket alone. The session's
    Ray runs the trials of both (its workers see the bucket); moto records every request."""
    root = tmp_path_factory.mktemp("s3sweep")
    dense = s3.uri("inputs", "dense.pt")
    storage.write_bytes(dense, (dense_digits / "final.pt").read_bytes())
    tracking = {**({"mlflow": {"tracking_uri": str(root / "mlruns"), "experiment": "raysweep-s3"}} if MLFLOW else {}),
                **({"tensorboard": True} if TENSORBOARD else {})}  # fmt: skip
    space_file = write_space(root, {**SPACE, "dense": dense, "tracking": tracking})
    store, address = s3.uri("sweeps"), ray_local.get_runtime_context().gcs_address
    exp = storage.join(store, SPACE["name"])
    s3.start_recording()
    started = time.time()
    cmd = [sys.executable, "-m", "raysweep.search", "--space", str(space_file), "--storage", store, "--address", address, "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not _finished(s3, "sweeps/s3"):
        time.sleep(0.5)
    assert proc.poll() is None, f"the sweep ended before it could be killed: {proc.communicate()}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first_run_s = time.time() - started
    before = _finished(s3, "sweeps/s3")
    reports_before = storage.exists(storage.join(exp, "trials.csv"))
    time.sleep(2)  # let Ray notice the driver is gone and free its trials' workers
    resume_started = time.time()
    with _lines("raysweep.sweep") as lines:
        code = search.main(["--storage", store, "--resume", "--name", SPACE["name"], "-q"])
    resume_s = time.time() - resume_started
    requests = s3.stop_recording()
    assert code == 0
    restored = re.search(r"restored the experiment from \S+ in ([\d.]+) s", "\n".join(lines))
    return {"exp": exp, "mlruns": (root / "mlruns").as_uri(), "before": before, "reports_before": reports_before, "requests": requests, "first_run_s": first_run_s,
            "resume_s": resume_s, "restore_s": float(restored.group(1)) if restored else None}  # fmt: skip


def _trials(exp) -> pd.DataFrame:
    with storage.open_input(storage.join(exp, "trials.csv")) as f:
        return pd.read_csv(f)


def test_a_killed_sweep_resumes_from_the_bucket_with_every_trial_exactly_once(resumed):
    exp = resumed["exp"]
    assert resumed["before"] and not resumed["reports_before"]
    trials = _trials(exp)
    assert set(TRIAL_COLUMNS) <= set(trials.columns), trials.columns
    assert len(trials) == SPACE["trials"] and trials["trial_id"].is_unique
    assert (trials["status"] == "TERMINATED").all() and (trials["epochs"] == SPACE["epochs"]).all()
    for row in trials.itertuples():
        assert row.checkpoint.startswith(f"{exp}/trials/{row.trial_id}/checkpoint_epoch0001/"), row.checkpoint
        # every epoch trained once: a trial finished before the kill was not trained again
        assert [m["epoch"] for m in read_checkpoint(row.checkpoint).history] == list(range(SPACE["epochs"]))
        assert storage.is_file(storage.join(exp, "trials", row.trial_id, "run.log"))
    for name in REPORTS:
        assert storage.is_file(storage.join(exp, name)), name
    assert load_sweep_info(exp)["name"] == SPACE["name"]


def test_the_reports_are_rebuilt_from_the_bucket(resumed, capsys):
    exp = resumed["exp"]
    before = _trials(exp)
    for name in REPORTS:
        storage.remove(storage.join(exp, name))
    assert report.main([str(exp)]) == 0
    assert f"{exp}/pareto.png" in capsys.readouterr().out
    for name in REPORTS:
        assert storage.is_file(storage.join(exp, name)), name
    assert list(_trials(exp)["trial_id"]) == list(before["trial_id"]) == list(trials_frame(exp)["trial_id"])
    assert report.main([storage.join(storage.parent(exp), "nothere")]) == 2


def test_a_trial_exports_from_its_uri(resumed, tmp_path):
    exp = resumed["exp"]
    trial = _trials(exp)["trial_id"].iloc[0]
    assert export.main([str(storage.join(exp, "trials", trial)), "--out", str(tmp_path / "a.pt2"), "-q"]) == 0
    assert export.main([trial, "--sweep", str(exp), "--out", str(tmp_path / "b.pt2"), "-q"]) == 0
    assert (tmp_path / "a.pt2").stat().st_size > 0 and (tmp_path / "b.pt2").stat().st_size > 0


def test_the_figures_of_the_s3_sweep(resumed):
    """What docs/cluster.md quotes: requests and bytes the sweep wrote, per trial, and the resume."""
    requests = [r for r in resumed["requests"] if "Boto3" not in r["headers"].get("User-Agent", "")]
    figures = summarise(requests, "sweeps/s3")
    n = SPACE["trials"]
    figures.update({
        "trials": n, "epochs": SPACE["epochs"], "write_requests_per_trial": figures["write_requests"] / n,
        "bytes_written_per_trial": figures["bytes_written"] / n, "first_run_s": resumed["first_run_s"],
        "resume_s": resumed["resume_s"], "restore_s": resumed["restore_s"],
    })  # fmt: skip
    print("\nS3 figures:", json.dumps(figures, indent=1))
    if os.environ.get("RAYSWEEP_S3_FIGURES"):
        with open(os.environ["RAYSWEEP_S3_FIGURES"], "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=1)
    # Each trial's epochs are checkpointed in the bucket: an upload under a temporary key and a
    # server-side copy to its name per epoch, each at least the model's weights.
    checkpoints = n * SPACE["epochs"]
    weights = sum(p.numel() * p.element_size() for p in create_model(SPACE["model"], dataset="digits").parameters())
    trials_part = figures["parts"]["trials"]
    assert trials_part["write_requests"] >= 2 * checkpoints and trials_part["bytes_written"] >= checkpoints * weights, figures
    assert set(figures["parts"]) == {"trials", "tune trial folders", "experiment"}, figures


def test_mlflow_holds_one_run_per_trial_under_the_sweeps_run(resumed, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it to read a folder
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=resumed["mlruns"])
    experiment = client.get_experiment_by_name("raysweep-s3")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    (sweep,) = [r for r in runs if r.data.tags.get("raysweep.role") == "sweep"]  # the resume found it again
    assert sweep.info.status == "FINISHED" and sweep.data.metrics["finished"] == SPACE["trials"]
    artifacts = {a.path for a in client.list_artifacts(sweep.info.run_id)}
    assert {*REPORTS, "sweep.json"} <= artifacts, artifacts
    trials = _trials(resumed["exp"])
    for trial in trials.itertuples():
        (run,) = [r for r in runs if r.data.tags.get("raysweep.trial_id") == trial.trial_id]
        assert run.data.tags["mlflow.parentRunId"] == sweep.info.run_id
        assert run.data.params["method"] == trial.method  # the trial's config
        epochs = {m.value for m in client.get_metric_history(run.info.run_id, "epoch")}
        assert epochs == {float(e) for e in range(SPACE["epochs"])}, epochs  # every epoch's metrics
        assert run.data.metrics["accuracy"] == pytest.approx(trial.accuracy)


def _records(data: bytes):
    """TFRecord framing: length (8 bytes), its CRC (4), the record, its CRC (4)."""
    offset = 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        yield data[offset + 12:offset + 12 + length]
        offset += 12 + length + 4


def test_tensorboard_event_files_hold_every_trials_metrics(resumed, s3):
    pytest.importorskip("tensorboardX")
    from tensorboardX.proto.event_pb2 import Event

    files = [k for k in s3.keys("sweeps/s3/") if "/events.out.tfevents." in k]
    for trial in _trials(resumed["exp"])["trial_id"]:
        tags = set()
        for key in (k for k in files if k.split("/")[2] == trial):
            for record in _records(storage.read_bytes(s3.uri(key))):
                tags |= {v.tag for v in Event.FromString(record).summary.value}
        assert {"ray/tune/accuracy", "ray/tune/sparsity", "ray/tune/epoch"} <= tags, (trial, tags)
