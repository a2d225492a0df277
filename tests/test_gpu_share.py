"""Several trials per GPU: a fractional gpus_per_worker reaches what Tune reserves per trial, what
the trainer's workers ask for, and how many trials the sweep runs at once on a cluster's GPUs
(the arithmetic, on this CPU machine; tests/test_gpu_bench.py declares a GPU to a real Ray)."""
from __future__ import annotations

import pytest

from raysweep.config import RunConfig
from raysweep.errors import RunInputError
from raysweep.space import SpaceError, load_space
from raysweep.sweep.driver import base_run_config
from raysweep.sweep.executors import get_executor, max_concurrent_trials
from raysweep.trial.runner import build_trainer, check_fits

POINT = {"trials": 0, "points": [{"method": "irregular", "ratios": {"*": 0.5}}]}


def space(**resources):
    return load_space({**POINT, "resources": resources})


@pytest.mark.parametrize("gpus_per_worker,cluster,trials", [
    (1.0, {"CPU": 16, "GPU": 4}, 4),
    (0.5, {"CPU": 16, "GPU": 4}, 8),
    (0.25, {"CPU": 16, "GPU": 4}, 16),  # four trials share each GPU
    (0.25, {"CPU": 8, "GPU": 4}, 8),  # ... unless the CPUs run out first
    (0.25, {"CPU": 64, "GPU": 1}, 4),
    (0.3, {"CPU": 64, "GPU": 1}, 3),  # a share that does not divide a GPU leaves the rest idle
])  # fmt: skip
def test_one_worker_trials_share_gpus_by_their_fraction(gpus_per_worker, cluster, trials):
    executor = get_executor(space(gpus_per_worker=gpus_per_worker))
    assert executor.name == "inprocess"
    assert executor.trial_resources() == {"CPU": 1.0, "GPU": gpus_per_worker}  # what Tune reserves per trial
    assert max_concurrent_trials(executor, cluster) == trials


def test_multi_worker_trials_take_whole_gpus_and_their_trainer_asks_the_fraction():
    executor = get_executor(space(workers_per_trial=2, gpus_per_worker=1))
    assert executor.footprint() == {"CPU": 2.0, "GPU": 2.0}
    assert max_concurrent_trials(executor, {"CPU": 16, "GPU": 4}) == 2
    with pytest.raises(SpaceError, match="Ray may place two ranks of one trial on the same GPU, which NCCL refuses"):
        space(workers_per_trial=2, gpus_per_worker=0.5)
    base = base_run_config(space(gpus_per_worker=0.25), "dense.pt")
    assert base.use_gpu and base.gpus_per_worker == 0.25
    scaling = build_trainer(base, "/tmp/unused", "x").scaling_config  # a pool group or trainer trial's workers
    assert scaling.use_gpu and scaling.resources_per_worker == {"CPU": 1.0, "GPU": 0.25}
    assert base_run_config(space(), None).use_gpu is False


def test_a_run_fits_by_its_gpu_share():
    cfg = RunConfig(use_gpu=True, gpus_per_worker=0.25, workers=2)
    check_fits(cfg, {"CPU": 2, "GPU": 0.5}, "the Ray cluster")
    with pytest.raises(RunInputError, match=r"--workers 2 x --gpus_per_worker 0.25 with --use_gpu needs 0.5 GPUs; the Ray cluster has 0.4"):
        check_fits(cfg, {"CPU": 2, "GPU": 0.4}, "the Ray cluster")
    with pytest.raises(ValueError, match=r"1 worker\(s\) x 1 CPU = 1 CPU and 1 x 0.25 GPU = 0.25 GPU"):
        max_concurrent_trials(get_executor(space(gpus_per_worker=0.25)), {"CPU": 4, "GPU": 0})


def test_a_sweep_runs_no_more_trials_at_once_than_it_plans():
    """The pool starts a worker group per trial it can run at once: a one-point sweep on a big
    cluster starts one, not as many as would fit."""
    from raysweep.sweep.driver import sweep_concurrency

    cluster = {"CPU": 64, "GPU": 4}
    one = space(workers_per_trial=2, executor="pool")
    assert max_concurrent_trials(get_executor(one), cluster) == 32
    assert sweep_concurrency(one, get_executor(one), cluster, "the Ray cluster") == 1
    five = load_space({**POINT, "trials": 4, "methods": {"irregular": {"*": {"uniform": [0.3, 0.9]}}}, "resources": {"workers_per_trial": 2, "executor": "pool"}})
    assert sweep_concurrency(five, get_executor(five), cluster, "the Ray cluster") == 5
