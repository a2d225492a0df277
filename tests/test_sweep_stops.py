"""A sweep that ends early ends well: no finished trial still reports, Ctrl-C and SIGTERM stop
it with its reports and the command that resumes it, and a storage failing under the trials
stops it with one message; every resume then loses nothing."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from helpers import tiny_space, write_space
from raysweep import report, search

pytestmark = pytest.mark.ray


def test_a_sweep_in_which_no_trial_finishes_still_reports(ray_local, dense_digits, tmp_path, capsys):
    space = tiny_space("diverge", dense=str(dense_digits / "final.pt"), trials=2, lr=1.0e12, seed=5)
    assert search.main(["--space", str(write_space(tmp_path, space)), "--storage", str(tmp_path), "-q"]) == 1
    assert "no trial finished: 2 of 2 failed" in capsys.readouterr().err
    exp = tmp_path / "diverge"
    trials = pd.read_csv(exp / "trials.csv")
    assert list(trials["status"]) == ["ERROR", "ERROR"]
    assert trials["error"].str.contains("FloatingPointError").all()
    assert {"accuracy", "sparsity"} <= set(trials.columns)  # the objectives, empty
    assert "## Failed trials (2)" in (exp / "report.md").read_text()
    assert pd.read_csv(exp / "pareto.csv").empty
    assert report.main([str(exp)]) == 0


def _sweep(storage: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "raysweep.search", "--storage", str(storage), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished(exp: Path) -> int:
    """Trials whose last epoch is checkpointed (3 epochs: checkpoint_epoch0002)."""
    return len(list(exp.glob("trials/*/checkpoint_epoch0002")))


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not condition():
        time.sleep(0.3)
    assert proc.poll() is None, f"the sweep ended before the test could act: {proc.communicate()}"


def test_sigint_and_sigterm_stop_the_sweep_with_reports_and_the_resume_command(ray_local, dense_digits, tmp_path):
    space = tiny_space("stops", dense=str(dense_digits / "final.pt"), trials=6, epochs=3, seed=7)
    space_file = write_space(tmp_path, space)
    exp = tmp_path / "stops"
    address = ray_local.get_runtime_context().gcs_address
    resume = ["--resume", "--name", "stops", "--address", address]
    ends = []
    for sig, code, args in [(signal.SIGINT, 130, ["--space", str(space_file), "--address", address]), (signal.SIGTERM, 143, resume)]:
        before = _finished(exp)
        proc = _sweep(tmp_path, *args)
        _wait_for(lambda: _finished(exp) > before, proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == code, err
        assert f"--resume --name stops --storage {tmp_path}" in err  # the exact command that resumes it
        assert "Tuner.restore" not in out + err
        trials = pd.read_csv(exp / "trials.csv")
        ends.append((trials["status"] == "TERMINATED").sum())
        assert ends[-1] >= 1 and len(trials) < 6 or (trials["status"] != "TERMINATED").any()
    # Only --name (and --storage) to resume: the space is the one saved with the sweep.
    assert search.main(["--storage", str(tmp_path), *resume, "-q"]) == 0
    trials = pd.read_csv(exp / "trials.csv")
    assert len(trials) == 6 and trials["trial_id"].is_unique and (trials["status"] == "TERMINATED").all()
    assert (trials["epochs"] == 3).all()


def test_a_storage_that_fails_under_the_trials_stops_the_sweep_and_a_resume_loses_nothing(ray_local, dense_digits, tmp_path):
    space = tiny_space("broken", dense=str(dense_digits / "final.pt"), trials=8, epochs=3, seed=11)
    space_file = write_space(tmp_path, space)
    exp = tmp_path / "broken"
    address = ray_local.get_runtime_context().gcs_address
    proc = _sweep(tmp_path, "--space", str(space_file), "--address", address)
    _wait_for(lambda: _finished(exp) >= 1, proc)
    # The trials' part of the storage goes away under the sweep: every checkpoint write now fails.
    (exp / "trials").rename(exp / "trials.away")
    (exp / "trials").write_text("not a folder")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert err.count("the storage failed: [Errno") == 1 and str(exp / "trials") in err
    assert "fix the storage, then resume with:" in err
    (exp / "trials").unlink()
    (exp / "trials.away").rename(exp / "trials")
    assert search.main(["--storage", str(tmp_path), "--resume", "--name", "broken", "--address", address, "-q"]) == 0
    trials = pd.read_csv(exp / "trials.csv")
    assert len(trials) == 8 and trials["trial_id"].is_unique and (trials["status"] == "TERMINATED").all()
    assert (trials["epochs"] == 3).all()
