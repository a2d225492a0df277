"""Bad input to raysweep.train / raysweep.prune: one clear message, exit 2, before any Ray work."""
from __future__ import annotations

import pytest

from raysweep import prune, train


pytestmark = pytest.mark.usefixtures("no_ray")  # validation fails before Ray starts


def _err(capsys) -> str:
    return capsys.readouterr().err


def test_unknown_model_names_the_nearest(capsys, tmp_path):
    assert train.main(["--model", "digit_cnn", "--output", str(tmp_path)]) == 2
    assert "digits_cnn" in _err(capsys)


def test_unknown_dataset_names_the_nearest(capsys, tmp_path):
    assert train.main(["--dataset", "cifar11", "--output", str(tmp_path)]) == 2
    assert "cifar10" in _err(capsys)


def test_missing_dataset_names_the_path(capsys, tmp_path):
    assert train.main(["--dataset", "cifar10", "--model", "vgg16", "--data_root", str(tmp_path / "nowhere"), "--output", str(tmp_path)]) == 2
    assert str(tmp_path / "nowhere") in _err(capsys)


def test_unknown_method(capsys, tmp_path):
    assert prune.main(["--prune_type", "filtr", "--ratio", "0.5", "--output", str(tmp_path)]) == 2
    assert "filter" in _err(capsys)


@pytest.mark.parametrize("ratio", ["1.5", "-0.1", "m4n4", "m0n0", "mxn2"])
def test_bad_ratio(capsys, tmp_path, ratio):
    assert prune.main(["--prune_type", "irregular", "--ratio", ratio, "--output", str(tmp_path)]) == 2
    assert _err(capsys).strip()


def test_config_naming_no_parameter(capsys, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("prune_ratio:\n  module.features.99.weight: 0.5\n")
    assert prune.main(["--prune_type", "irregular", "--config_file", str(cfg), "--output", str(tmp_path)]) == 2
    err = _err(capsys)
    assert "features.99.weight" in err and "features." in err


def test_missing_weight_file(capsys, tmp_path):
    assert prune.main(["--prune_type", "irregular", "--ratio", "0.5", "--weight_file", str(tmp_path / "no.pt"), "--output", str(tmp_path)]) == 2
    assert "no.pt" in _err(capsys)


def test_corrupt_checkpoint(capsys, tmp_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"this is not a checkpoint")
    assert prune.main(["--prune_type", "irregular", "--ratio", "0.5", "--weight_file", str(bad), "--output", str(tmp_path)]) == 2
    assert "corrupt.pt" in _err(capsys)


def test_resume_of_a_folder_that_is_no_run(capsys, tmp_path):
    assert train.main(["--resume", str(tmp_path)]) == 2
    assert "config.json" in _err(capsys)


def test_tests_outside_the_ray_lane_cannot_start_ray():
    """The guard that keeps `pytest -m "not ray"` free of Ray processes (tests/conftest.py)."""
    import ray

    from raysweep import ray_env

    with pytest.raises(AssertionError, match="not marked ray|despite bad input"):
        ray_env.init_ray()
    assert not ray.is_initialized()


def test_workers_beyond_this_machine_fail_before_ray_and_write_nothing(capsys, tmp_path):
    assert train.main(["--workers", "2", "--cpus_per_worker", "100000", "--epochs", "1", "--output", str(tmp_path / "runs"), "-q"]) == 2
    err = _err(capsys)
    assert "--workers 2 x --cpus_per_worker 100000 needs 200000 CPUs; this machine has" in err
    assert not (tmp_path / "runs").exists()
