"""Where a sweep's trials train: the one execution policy, ``resources.executor`` in the space.

* ``inprocess`` -- the loop in the Tune trial's own process (one worker only): a trial costs
  well under a second beyond its training, and Tune reuses the process for the next trial.
* ``pool`` -- DDP in one of the sweep's long-lived ``TorchTrainer`` worker groups
  (raysweep.sweep.pool): only a group's first trial pays for starting its workers.
* ``trainer`` -- a ``TorchTrainer`` of the trial's own, started and torn down per trial.
* ``auto`` -- ``inprocess`` for one worker per trial, ``pool`` for more.

The driver resolves the name once (``resolve_executor``) and everything else asks the executor:
what a trial reserves, how many fit at once, what starts before Tune and stops after it, which
Tune callbacks it needs, and -- in the trial's process -- how the trial trains.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from raysweep import storage
from raysweep.config import RunConfig
from raysweep.space import Resources, SearchSpace

# Tune needs every trial function to hold some resource. One that only hands its trial to Train
# workers holds this much memory and no CPU, so the workers' CPUs alone decide what fits: two
# workers x 1 CPU run on a 2-CPU node.
TRIAL_FUNCTION_MEMORY = 1 << 20  # bytes


@dataclass
class SweepContext:
    """What every trial needs besides its sampled config; travels through the object store."""

    space: SearchSpace
    base: RunConfig
    trials_dir: str  # <experiment>/trials (a folder or a URI): each trial's checkpoints under <trial_id>/
    executor: str  # resolved name, decided once in the driver
    dispatcher: Any = None  # the pool's dispatcher actor, for the `pool` executor


class Executor:
    """One way to run a sweep's trials: driver-side lifecycle, and ``run`` in the trial's process."""

    name = ""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources

    def trial_resources(self) -> dict[str, float]:
        """What Tune reserves for the trial function."""
        return {"CPU": 0, "memory": TRIAL_FUNCTION_MEMORY}

    def footprint(self) -> dict[str, float]:
        """What one running trial holds in all (its workers): how many fit at once is counted from this."""
        r = self.resources
        gpus = {"GPU": r.workers_per_trial * r.gpus_per_worker} if r.gpus_per_worker else {}
        return {"CPU": r.workers_per_trial * r.cpus_per_worker, **gpus}

    def start(self, base: RunConfig, slots: int, exp_dir: Path, trials_planned: Optional[int]) -> Any:
        """Driver, before Tune starts; returns what trials need from it (the pool's dispatcher)."""
        return None

    def stop(self) -> None:
        """Driver, after Tune ends (or is interrupted)."""

    def callbacks(self) -> list:
        return []

    def describe(self, slots: int) -> str:
        r = self.resources
        gpus = f" x {r.gpus_per_worker:g} GPU" if r.gpus_per_worker else ""
        return f"executor {self.name}: {r.workers_per_trial} worker(s){gpus} per trial, up to {slots} trial(s) at once"

    @staticmethod
    def run(context: SweepContext, cfg: RunConfig, trial_id: str) -> None:
        """In the Tune trial's process: train this trial, reporting each epoch to Tune."""
        raise NotImplementedError


EXECUTORS: dict[str, type[Executor]] = {}


def register_executor(name: str) -> Callable[[type[Executor]], type[Executor]]:
    def deco(cls: type[Executor]) -> type[Executor]:
        cls.name = name
        EXECUTORS[name] = cls
        return cls

    return deco


def resolve_executor(resources: Resources) -> str:
    """The executor a space's ``resources.executor`` means (``auto`` decided here)."""
    if resources.executor != "auto":
        return resources.executor
    return "inprocess" if resources.workers_per_trial == 1 else "pool"


def get_executor(space: SearchSpace) -> Executor:
    return EXECUTORS[resolve_executor(space.resources)](space.resources)


def trial_folder(context: SweepContext, trial_id: str) -> storage.Location:
    """``<experiment>/trials/<trial_id>``: a local folder or a storage URI (raysweep.storage)."""
    return storage.join(context.trials_dir, trial_id)


@register_executor("inprocess")
class InProcess(Executor):
    def trial_resources(self) -> dict[str, float]:
        # The trial function is the worker: it holds the worker's CPUs and GPU itself.
        r = self.resources
        return {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if r.gpus_per_worker else {})}

    def footprint(self) -> dict[str, float]:
        return self.trial_resources()

    @staticmethod
    def run(context: SweepContext, cfg: RunConfig, trial_id: str) -> None:
        from raysweep.trial.logs import trial_log
        from raysweep.trial.loop import run_loop
        from raysweep.trial.sessions import TuneSession

        folder = trial_folder(context, trial_id)
        with trial_log(folder):
            run_loop({"run": cfg.to_dict(), "run_dir": ""}, TuneSession(folder, use_gpu=cfg.use_gpu))


@register_executor("trainer")
class OwnTrainer(Executor):
    @staticmethod
    def run(context: SweepContext, cfg: RunConfig, trial_id: str) -> None:
        from ray.tune.integration.ray_train import TuneReportCallback

        from raysweep.trial.runner import build_trainer

        build_trainer(cfg, context.trials_dir, trial_id, callbacks=[TuneReportCallback()]).fit()


def max_concurrent_trials(executor: Executor, cluster: dict[str, float], where: str = "the Ray cluster") -> int:
    """As many trials as ``cluster`` holds at once, so no trial waits forever for workers;
    a ValueError saying what the fit was computed from when not even one fits."""
    need = executor.footprint()
    fits = min(math.floor(cluster.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0)
    if fits < 1:
        r = executor.resources
        gpus = f" and {r.workers_per_trial} x {r.gpus_per_worker:g} GPU = {need['GPU']:g} GPU" if "GPU" in need else ""
        raise ValueError(
            f"one trial needs {r.workers_per_trial} worker(s) x {r.cpus_per_worker:g} CPU = {need['CPU']:g} CPU{gpus} "
            f"(resources.workers_per_trial, cpus_per_worker, gpus_per_worker); {where} has "
            f"{cluster.get('CPU', 0.0):g} CPU and {cluster.get('GPU', 0.0):g} GPU"
        )
    return fits
