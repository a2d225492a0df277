"""Shared fixtures: one local Ray instance for the whole session (starting Ray costs seconds),
dense digits weights trained once without Ray, and the check for training outcomes."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Small forwards on a shared 2-core box: one thread avoids OpenMP spin contention (~10x)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _refuse(why: str):
    def refuse(*a, **k):
        raise AssertionError(why)

    return refuse


@pytest.fixture(autouse=True)
def ray_only_in_the_ray_lane(request, monkeypatch):
    """A test without the ``ray`` marker cannot start Ray, so ``pytest -m "not ray"`` (the fast
    lane of .ci/run) runs no Ray process at all."""
    if request.node.get_closest_marker("ray") is None:
        import ray

        monkeypatch.setattr(ray, "init", _refuse(f"{request.node.name} starts Ray but is not marked ray"))


@pytest.fixture
def no_ray(monkeypatch):
    """Validation must fail before Ray starts: starting it (raysweep's way or Ray's own) fails
    the test."""
    import ray

    from raysweep import ray_env

    monkeypatch.setattr(ray_env, "init_ray", _refuse("Ray was started despite bad input"))
    monkeypatch.setattr(ray, "init", _refuse("Ray was started despite bad input"))


@pytest.fixture(scope="session")
def ray_local(request):
    """A 2-CPU local Ray with the dashboard on loopback, shut down at the end of the session.
    Started after the session's S3 server (where moto is installed), so that its workers see the
    AWS variables as a cloud node sees its bucket's."""
    import importlib.util

    import ray

    from raysweep.ray_env import apply_ray_env_defaults

    if importlib.util.find_spec("moto") is not None and not ray.is_initialized():
        request.getfixturevalue("s3")

    apply_ray_env_defaults()
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


# Seed of every test whose verdict is an outcome of training (the dense weights included);
# benchmarks/bench_outcome_margins.py replays those tests over several seeds and CPU kernels.
OUTCOME_SEED = int(os.environ.get("RAYSWEEP_TEST_SEED", "0"))


@pytest.fixture(scope="session")
def dense_digits(tmp_path_factory):
    """A dense digits_cnn trained once, in this process (no Ray), for every test that prunes it:
    ``<folder>/final.pt`` (a raysweep checkpoint) and ``metrics.csv``."""
    import pandas as pd

    from helpers import run_local
    from raysweep.config import RunConfig
    from raysweep.trial.checkpoint import save_checkpoint

    out = tmp_path_factory.mktemp("dense") / "dense"
    out.mkdir()
    session = run_local(RunConfig(epochs=15, seed=OUTCOME_SEED, print_freq=0))
    save_checkpoint(session.state, out / "final.pt")
    pd.DataFrame(session.reports).to_csv(out / "metrics.csv", index=False)
    return out


@pytest.fixture
def outcome(request):
    """``outcome(value, bound)`` asserts ``value >= bound`` for a training outcome and, when
    ``RAYSWEEP_OUTCOME_LOG`` names a file, appends the test, value, bound and margin to it."""

    def check(value: float, bound: float) -> None:
        log = os.environ.get("RAYSWEEP_OUTCOME_LOG")
        if log:
            row = {"test": request.node.nodeid, "value": float(value), "bound": float(bound),
                   "margin": float(value) - float(bound), "seed": OUTCOME_SEED,
                   "capability": os.environ.get("ATEN_CPU_CAPABILITY", "")}  # fmt: skip
            with open(log, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        assert value >= bound, f"{request.node.name}: {value:.4f} is below its bound {bound:.4f}"

    return check


def _checkpointed_epochs(exp) -> dict[str, int]:
    """Trial id -> the last epoch checkpointed, for a sweep's trials that have one (all keep
    them under ``trials/<id>/``). ``exp`` may be a storage URI: its checkpoints count once whole."""
    from raysweep import storage
    from raysweep.trial.checkpoint import CheckpointError, CheckpointFolder, read_checkpoint

    if storage.is_uri(exp):
        trials = [e.name for e in storage.listdir(storage.join(exp, "trials")) if e.is_dir]
        saved = {t: CheckpointFolder(storage.join(exp, "trials", t))._saved() for t in trials}
        return {t: s[-1][0] for t, s in saved.items() if s}
    found = list(exp.glob("trials/*/checkpoint_epoch*/checkpoint.pt"))
    epochs: dict[str, int] = {}
    for path in found:
        try:
            epoch = read_checkpoint(path).epoch
        except CheckpointError:  # deleted as a newer one lands
            continue
        trial = path.parents[1].name
        epochs[trial] = max(epoch, epochs.get(trial, -1))
    return epochs


@pytest.fixture(scope="session")
def checkpointed_epochs():
    return _checkpointed_epochs


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3 API on loopback for the whole session: moto's server (tests/s3server.py), with
    authentication on. The standard AWS variables point this process, and what it starts, at it."""
    pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
    from s3server import MotoS3

    server = MotoS3(tmp_path_factory.mktemp("s3")).start()
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()
