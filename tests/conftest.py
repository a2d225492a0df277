"""Shared fixtures: one local Ray instance for the whole session (starting Ray costs seconds)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def ray_local():
    """A 2-CPU local Ray with the dashboard on loopback, shut down at the end of the session."""
    import ray

    from raysweep.engine import apply_ray_env_defaults

    apply_ray_env_defaults()
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def dense_digits(ray_local, tmp_path_factory):
    """A dense digits_cnn trained once for every test that prunes it."""
    from raysweep import train

    out = tmp_path_factory.mktemp("dense")
    rc = train.main(["--epochs", "15", "--output", str(out), "--name", "dense", "--print_freq", "0", "-q"])
    assert rc == 0
    return out / "dense"


def _checkpointed_epochs(exp: Path) -> dict[str, int]:
    """Trial id -> the last epoch checkpointed, for a sweep's trials that have one (all keep
    them under ``trials/<id>/``)."""
    import torch

    found = list(exp.glob("trials/*/checkpoint_epoch*/checkpoint.pt"))
    epochs: dict[str, int] = {}
    for path in found:
        try:
            epoch = int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
        except Exception:  # deleted as a newer one lands
            continue
        trial = path.parents[1].name
        epochs[trial] = max(epoch, epochs.get(trial, -1))
    return epochs


@pytest.fixture(scope="session")
def checkpointed_epochs():
    return _checkpointed_epochs
