"""A one-worker sweep trial's own checkpoints: atomic, newest kept, resumed from after a kill."""
from __future__ import annotations

import pytest
import torch

import raysweep.session as session_mod
from raysweep.config import RunConfig
from raysweep.loop import run_loop
from raysweep.session import CHECKPOINT_FILE, TrialCheckpoints, TuneSession


def _folders(path):
    return sorted(p.name for p in path.iterdir())


def test_each_save_leaves_only_the_newest_complete_checkpoint(tmp_path):
    ckpts = TrialCheckpoints(tmp_path / "trial")
    assert ckpts.latest() is None  # no folder yet
    for epoch in range(3):
        ckpts.save({"epoch": epoch, "w": torch.full((2,), float(epoch))}, epoch)
    assert _folders(tmp_path / "trial") == ["checkpoint_epoch0002"]
    latest = ckpts.latest()
    assert latest["epoch"] == 2 and torch.equal(latest["w"], torch.full((2,), 2.0))


def test_an_unreadable_newest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    folder = tmp_path / "trial"
    ckpts = TrialCheckpoints(folder)
    ckpts.save({"epoch": 4}, 4)
    # A newer one that cannot load (e.g. copied in half by hand) and a write a kill interrupted.
    (folder / "checkpoint_epoch0005").mkdir()
    (folder / "checkpoint_epoch0005" / CHECKPOINT_FILE).write_bytes(b"not a torch file")
    (folder / ".checkpoint_epoch0006.abc").mkdir()
    with caplog.at_level("WARNING", logger="raysweep.session"):
        assert ckpts.latest()["epoch"] == 4
    assert "checkpoint_epoch0005" in caplog.text
    ckpts.save({"epoch": 6}, 6)
    assert _folders(folder) == ["checkpoint_epoch0006"]  # older and half-written ones gone


def test_saving_the_same_epoch_again_replaces_it(tmp_path):
    ckpts = TrialCheckpoints(tmp_path)
    ckpts.save({"epoch": 3, "v": 1}, 3)
    ckpts.save({"epoch": 3, "v": 2}, 3)
    assert _folders(tmp_path) == ["checkpoint_epoch0003"] and ckpts.latest()["v"] == 2


class _Killed(Exception):
    pass


def test_a_trial_killed_mid_run_resumes_after_its_last_checkpoint(tmp_path, monkeypatch, dense_digits):
    """What a resumed sweep does: Tune starts the unfinished trial again with no checkpoint of
    its own, and the trial continues from the newest one in its folder."""
    import ray.tune

    reports: list[dict] = []

    def report(metrics, checkpoint=None):
        assert checkpoint is None  # Tune is never handed a checkpoint to keep (or delete)
        reports.append(metrics)
        if metrics["epoch"] == 1 and len(reports) == 2:
            raise _Killed

    monkeypatch.setattr(ray.tune, "report", report)
    monkeypatch.setattr(session_mod, "_node_id", lambda: "node")
    cfg = RunConfig(
        model="digits_cnn", dataset="digits", weight_file=str(dense_digits / "final.pt"), method="irregular",
        targets={"*": 0.7}, epochs=4, lr=0.01, batch_size=128, print_freq=0, seed=0,
    )
    folder = tmp_path / "trials" / "t1"
    with pytest.raises(_Killed):
        run_loop({"run": cfg.to_dict(), "run_dir": ""}, TuneSession(folder))
    assert [r["epoch"] for r in reports] == [0, 1]
    assert _folders(folder) == ["checkpoint_epoch0001"]  # saved before the report

    run_loop({"run": cfg.to_dict(), "run_dir": ""}, TuneSession(folder))
    assert [r["epoch"] for r in reports] == [0, 1, 2, 3]
    final = TrialCheckpoints(folder).latest()
    assert final["epoch"] == 3 and [m["epoch"] for m in final["history"]] == [0, 1, 2, 3]
    assert final["metrics"]["sparsity"] == pytest.approx(final["metrics"]["target_sparsity"], abs=1e-3)
