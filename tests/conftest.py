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
