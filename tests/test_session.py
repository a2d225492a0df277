"""The checkpoint format and a trial's own checkpoint folder: one writer, one reader, atomic,
newest kept, resumed from after a kill."""
from __future__ import annotations

import pytest
import torch

import raysweep.trial.sessions as sessions_mod
from raysweep.config import RunConfig
from raysweep.trial.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    CheckpointError,
    CheckpointFolder,
    read_checkpoint,
    read_weights,
    save_checkpoint,
)
from raysweep.trial.loop import run_loop
from raysweep.trial.sessions import TuneSession


def _folders(path):
    return sorted(p.name for p in path.iterdir())


def _state(epoch: int, **tensors) -> Checkpoint:
    return Checkpoint(model=tensors or {"w": torch.zeros(1)}, epoch=epoch)


def test_the_format_round_trips_and_reads_what_older_versions_wrote(tmp_path):
    state = Checkpoint(model={"w": torch.ones(2)}, config={"lr": 0.1}, epoch=3, metrics={"accuracy": 0.5},
                       history=[{"epoch": 3}], best_accuracy=0.5, train_s=1.5, nm_permute_gain=0.02)  # fmt: skip
    save_checkpoint(state, tmp_path / "c.pt")
    back = read_checkpoint(tmp_path / "c.pt")
    assert back.to_payload().keys() == state.to_payload().keys() and back.nm_permute_gain == 0.02
    assert torch.equal(back.model["w"], state.model["w"]) and back.history == [{"epoch": 3}]
    # What earlier versions saved: a plain dict without the newer fields, read with defaults.
    torch.save({"model": {"module.w": torch.ones(2)}, "epoch": 1, "history": [], "extra": 1}, tmp_path / "old.pt")
    old = read_checkpoint(tmp_path / "old.pt")
    assert old.epoch == 1 and old.nm_permute_gain is None and old.optimizer is None
    weights, source = read_weights(tmp_path / "old.pt")
    assert list(weights) == ["w"] and source.epoch == 1  # DDP's module. prefix stripped
    torch.save({"w": torch.zeros(3)}, tmp_path / "plain.pth")
    assert read_weights(tmp_path / "plain.pth")[1] is None


def test_unreadable_files_name_themselves_and_the_reason(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"junk\.pt is not a readable checkpoint .*: "):
        read_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "missing.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds no model state dict"):
        read_weights(tmp_path / "list.pt")


def test_each_save_leaves_only_the_newest_complete_checkpoint(tmp_path):
    ckpts = CheckpointFolder(tmp_path / "trial")
    assert ckpts.latest() is None  # no folder yet
    for epoch in range(3):
        ckpts.save(_state(epoch, w=torch.full((2,), float(epoch))), epoch)
    assert _folders(tmp_path / "trial") == ["checkpoint_epoch0002"]
    latest = ckpts.latest()
    assert latest.epoch == 2 and torch.equal(latest.model["w"], torch.full((2,), 2.0))


def test_an_unreadable_newest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    folder = tmp_path / "trial"
    ckpts = CheckpointFolder(folder)
    ckpts.save(_state(4), 4)
    # A newer one that cannot load (e.g. copied in half by hand) and a write a kill interrupted.
    (folder / "checkpoint_epoch0005").mkdir()
    (folder / "checkpoint_epoch0005" / CHECKPOINT_FILE).write_bytes(b"not a torch file")
    (folder / ".checkpoint_epoch0006.abc").mkdir()
    with caplog.at_level("WARNING", logger="raysweep.checkpoint"):
        assert ckpts.latest().epoch == 4
    assert "checkpoint_epoch0005" in caplog.text
    ckpts.save(_state(6), 6)
    assert _folders(folder) == ["checkpoint_epoch0006"]  # older and half-written ones gone


def test_saving_the_same_epoch_again_replaces_it(tmp_path):
    ckpts = CheckpointFolder(tmp_path)
    ckpts.save(_state(3, v=torch.ones(1)), 3)
    ckpts.save(_state(3, v=torch.full((1,), 2.0)), 3)
    assert _folders(tmp_path) == ["checkpoint_epoch0003"] and ckpts.latest().model["v"].item() == 2.0


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
    monkeypatch.setattr(sessions_mod, "_node_id", lambda: "node")
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
    final = CheckpointFolder(folder).latest()
    assert final.epoch == 3 and [m["epoch"] for m in final.history] == [0, 1, 2, 3]
    assert final.metrics["sparsity"] == pytest.approx(final.metrics["target_sparsity"], abs=1e-3)
