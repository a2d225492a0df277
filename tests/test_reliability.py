"""What a new user meets when something is wrong, before Ray starts: resume, paths, names,
storage, addresses, corrupt files and the quiet footguns. One message, exit 2, nothing left behind."""
from __future__ import annotations

import logging
import math
import socket
import time
from pathlib import Path

import pytest
import torch

from raysweep import prune, ray_env, search
from raysweep.errors import RunInputError
from raysweep.models import create_model
from raysweep.space import SpaceError, load_space
from raysweep.sweep.inputs import resume_space, sweep_info
from raysweep.results.collect import save_sweep_info

pytestmark = pytest.mark.usefixtures("no_ray")
INIT_RAY = ray_env.init_ray  # the real one: the address check runs in it, before ray.init (still refused)


def _err(capsys) -> str:
    return capsys.readouterr().err


def _saved_sweep(storage: Path, name: str, spec: str, overrides: list[str]) -> Path:
    """An experiment folder as a started sweep leaves it: its sweep.json and Tune's files."""
    exp = storage / name
    space = load_space(spec, overrides)
    save_sweep_info(exp, sweep_info(name, spec, overrides, space))
    (exp / "tuner.pkl").write_bytes(b"")
    return exp


def test_resume_takes_the_saved_space_and_refuses_to_change_it(tmp_path, capsys):
    exp = _saved_sweep(tmp_path, "lw", "digits_layerwise", ["trials=7"])
    saved = resume_space(exp, None, [])
    assert saved.trials == 7
    assert set(saved.methods) == set(load_space("digits_layerwise").methods)
    assert resume_space(exp, "digits_layerwise", ["trials=7"]).trials == 7  # the same space again: fine
    with pytest.raises(RunInputError, match="change trials"):
        resume_space(exp, None, ["trials=10"])
    assert search.main(["--resume", "--name", "lw", "--storage", str(tmp_path), "--set", "trials=10"]) == 2
    assert "--resume continues lw with the space it was saved with" in _err(capsys)
    assert search.main(["--resume", "--name", "nothere", "--storage", str(tmp_path)]) == 2
    assert "no experiment at" in _err(capsys)


def test_relative_paths_are_resolved_where_the_command_runs(tmp_path, monkeypatch):
    import raysweep.trial.runner as runner

    monkeypatch.chdir(tmp_path)
    torch.save(create_model("digits_cnn").state_dict(), tmp_path / "w.pt")
    seen = {}

    def capture(cfg, **kwargs):
        seen["cfg"] = cfg
        raise RunInputError("stop here")

    monkeypatch.setattr(runner, "execute", capture)
    assert prune.main(["--prune_type", "nm", "--ratio", "m4n2", "--weight_file", "w.pt", "--output", "runs", "-q"]) == 2
    assert seen["cfg"].weight_file == str(tmp_path / "w.pt") and seen["cfg"].output == str(tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_lr_must_be_a_finite_number(value):
    with pytest.raises(SpaceError, match="lr: must be a number > 0"):
        load_space({"lr": value, "trials": 0, "points": [{"method": "irregular", "ratios": {"*": 0.5}}]})


def test_an_address_where_no_cluster_listens_fails_within_the_timeout(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAYSWEEP_CONNECT_TIMEOUT_S", "1")
    monkeypatch.setattr(ray_env, "init_ray", INIT_RAY)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    start = time.monotonic()
    assert search.main(["--address", f"127.0.0.1:{port}", "--name", "addr", "--storage", str(tmp_path / "s")]) == 2
    assert time.monotonic() - start < 15
    err = _err(capsys)
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in err and "RAYSWEEP_CONNECT_TIMEOUT_S" in err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("name", ["../../x", "team/a", "..", "a b"])
def test_a_name_is_one_folder(tmp_path, capsys, name):
    assert search.main(["--name", name, "--storage", str(tmp_path / "s")]) == 2
    assert "a name is one folder name" in _err(capsys)
    assert prune.main(["--prune_type", "irregular", "--ratio", "0.5", "--name", name, "--output", str(tmp_path / "r")]) == 2
    assert "a name is one folder name" in _err(capsys)
    assert not (tmp_path / "s").exists() and not (tmp_path / "r").exists() and not (tmp_path.parent / "x").exists()


def test_storage_that_is_a_file_or_cannot_be_written(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert search.main(["--storage", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in _err(capsys)
    assert search.main(["--storage", "/proc/raysweep-results"]) == 2  # /proc refuses new files, root or not
    assert "cannot write in /proc" in _err(capsys)


def test_a_corrupt_checkpoint_names_the_file_and_the_reason(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02garbage that is not a torch file")
    assert prune.main(["--prune_type", "irregular", "--ratio", "0.5", "--weight_file", str(bad), "--output", str(tmp_path)]) == 2
    err = _err(capsys)
    assert f"{bad} is not a readable checkpoint (corrupt or not a torch weights file): " in err
    run = tmp_path / "run"
    (run / "checkpoint_epoch0000").mkdir(parents=True)
    (run / "checkpoint_epoch0000" / "checkpoint.pt").write_bytes(b"truncated")
    (run / "config.json").write_text('{"method": "irregular", "targets": {"*": 0.5}}')
    assert prune.main(["--resume", str(run)]) == 2
    assert "checkpoint_epoch0000/checkpoint.pt is not a readable checkpoint" in _err(capsys)


def _stop_before_ray(monkeypatch):
    import raysweep.trial.runner as runner

    def stop(cfg, **kwargs):
        raise RunInputError("stopped before Ray")

    monkeypatch.setattr(runner, "execute", stop)


def test_quiet_footguns_are_warned_about_once(tmp_path, monkeypatch, caplog):
    _stop_before_ray(monkeypatch)
    with caplog.at_level(logging.WARNING):
        prune.main(["--prune_type", "irregular", "--ratio", "0.5", "--output", str(tmp_path), "-q"])
    assert caplog.text.count("pruning a randomly initialised digits_cnn") == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        prune.main(["--prune_type", "filter", "--ratio", "0.5", "--output", str(tmp_path), "-q"])
    assert caplog.text.count("classifier.2.weight (the output layer, 10 classes) removes whole classes") == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        prune.main(["--prune_type", "nm", "--ratio", "m3n1", "--output", str(tmp_path), "-q"])
    assert "prunes none of the targeted layers, so the model stays dense" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_space({"trials": 0, "points": [{"method": "filter", "ratios": {"*": 0.3}}]})
    assert "removes whole classes" in caplog.text


def test_trials_beyond_any_plan_are_refused_and_many_are_warned_about(tmp_path, capsys, caplog):
    assert search.main(["--set", "trials=1000000000", "--storage", str(tmp_path / "s")]) == 2
    assert "searched trials is more than 100000" in _err(capsys)
    from raysweep.sweep.inputs import check_space_inputs

    with caplog.at_level(logging.WARNING):
        check_space_inputs(load_space(None, ["trials=5000"]))
    assert "5000 searched trials" in caplog.text
