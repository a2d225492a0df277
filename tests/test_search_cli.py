"""Bad input to the sweep: every problem in one message, exit 2, before any Ray work."""
from __future__ import annotations

import pytest
import yaml

from raysweep import report, search


pytestmark = pytest.mark.usefixtures("no_ray")  # validation fails before Ray starts


def test_space_errors_are_reported_together(tmp_path, capsys):
    space = tmp_path / "bad.yaml"
    space.write_text(yaml.safe_dump({
        "trails": 3,
        "methods": {"irregular": {"features.3.weight": 1.2, "block9.*": 0.5}, "filtr": {"*": 0.5}},
    }))
    assert search.main(["--space", str(space), "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    for expected in ("trials", "1.2", "block9.*", "filter"):
        assert expected in err, expected
    assert not (tmp_path / "bad").exists()


def test_missing_dataset_is_an_error_before_ray(tmp_path, capsys):
    rc = search.main(["--space", "cifar10_vgg16", "--set", f"data_root={tmp_path / 'none'}", "--storage", str(tmp_path)])
    assert rc == 2
    assert str(tmp_path / "none") in capsys.readouterr().err


def test_unknown_override_key_suggests_the_nearest(tmp_path, capsys):
    assert search.main(["--set", "epocs=2", "--storage", str(tmp_path)]) == 2
    assert "epochs" in capsys.readouterr().err


def test_resume_without_an_experiment(tmp_path, capsys):
    assert search.main(["--resume", "--name", "nothing", "--storage", str(tmp_path)]) == 2
    assert "nothing" in capsys.readouterr().err


def test_report_of_a_missing_folder(tmp_path, capsys):
    assert report.main([str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_trials_that_cannot_fit_this_machine_fail_before_ray_and_write_nothing(tmp_path, capsys):
    storage = tmp_path / "results"
    args = ["--storage", str(storage), "--name", "big", "--set", "resources.workers_per_trial=2",
            "--set", "resources.cpus_per_worker=100000"]  # fmt: skip
    assert search.main(args) == 2
    err = capsys.readouterr().err
    assert "one trial needs 2 worker(s) x 100000 CPU = 200000 CPU" in err and "this machine has" in err
    assert not storage.exists()  # no sweep.json, no folder: the next run takes the name asked for
