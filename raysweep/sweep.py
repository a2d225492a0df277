"""The sweep on Ray Tune: each trial fine-tunes one pruned model (in its Tune process, or with
DDP in one of the sweep's ``TorchTrainer`` worker groups when it has several workers).

Layout of an experiment, ``<storage>/<name>/``:
  Ray Tune's own experiment state and trial folders (``<trial_id>/``: params, results),
  ``trials/<trial_id>/``   each trial's checkpoints (``checkpoint_epochNNNN/``; with
                           ``RAYSWEEP_TRIAL_POOL=0`` a multi-worker trial's own Ray Train run),
  ``pool/<start time>/``   the Ray Train runs of the worker groups (raysweep.pool),
  ``trials.csv``, ``pareto.csv``, ``report.md``, ``report.html``, ``pareto.png`` (raysweep.results).
Dense weights trained by the sweep are cached in ``<storage>/dense/`` and shared by every trial.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ray.tune.search import Searcher

from raysweep.config import RunConfig
from raysweep.engine import build_trainer, execute, init_ray
from raysweep.loop import run_loop
from raysweep.pool import PoolCallback, WorkerPool, pool_enabled, run_pool_trial
from raysweep.session import TuneSession
from raysweep.space import SearchSpace, to_tune, trial_run_config
from raysweep.space_validate import LATENCY_OBJECTIVES

log = logging.getLogger("raysweep.sweep")

# Ray Tune needs each trial function to hold some resource; the real work runs in the
# trial's Train workers, which reserve the CPUs/GPUs. This keeps the function's share tiny.
TRIAL_FUNCTION_CPU = 0.001

# Ray Tune settings for a sweep; each is only a default, a value in the environment wins
# (README "Ray settings"; Ray Train's own are raysweep.engine.RAY_ENV_DEFAULTS).
TUNE_ENV_DEFAULTS = {
    # Tune's newer console output ignores custom reporters; ours shows the columns that matter.
    "RAY_AIR_NEW_OUTPUT": "0",
}


@dataclass
class SweepContext:
    """What every trial needs besides its sampled config; travels through the object store."""

    space: SearchSpace
    base: RunConfig
    trials_dir: str
    # Decided once in the driver, whose environment RAYSWEEP_TRIAL_TRAINER is read from: a trial
    # process on another node need not have it, and trial resources were reserved by it.
    in_process: bool = True
    dispatcher: Any = None  # raysweep.pool.Dispatcher when multi-worker trials share worker groups


def run_trial(config: dict[str, Any], context: SweepContext) -> None:
    """Tune function trainable: one trial's fine-tune.

    One worker: the loop right here in the trial's process (``TuneSession``) -- a single rank
    gains nothing from a worker group, a controller and a process group, which cost a trial
    10-20 s of start-up and shutdown against ~1 s of digits training. Several workers: DDP in
    one of the sweep's long-lived ``TorchTrainer`` worker groups (``raysweep.pool``), or with
    ``RAYSWEEP_TRIAL_POOL=0`` a ``TorchTrainer`` of its own reporting to Tune.
    """
    import ray.tune

    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_run_config(context.space, config, context.base)
    cfg.name = trial_id
    if context.in_process:
        session = TuneSession(Path(context.trials_dir) / trial_id, use_gpu=cfg.use_gpu)
        run_loop({"run": cfg.to_dict(), "run_dir": ""}, session)
        return
    if context.dispatcher is not None:
        run_pool_trial(context.dispatcher, trial_id, cfg, str(Path(context.trials_dir) / trial_id))
        return
    from ray.tune.integration.ray_train import TuneReportCallback

    trainer = build_trainer(cfg, context.trials_dir, trial_id, callbacks=[TuneReportCallback()])
    trainer.fit()


def in_process(workers_per_trial: int) -> bool:
    """One-worker trials run in the Tune trial process unless RAYSWEEP_TRIAL_TRAINER=1 asks for
    a TorchTrainer anyway (e.g. to compare, or to keep Ray Train's worker restarts)."""
    return workers_per_trial == 1 and os.environ.get("RAYSWEEP_TRIAL_TRAINER", "0") != "1"


def uses_pool(space: SearchSpace) -> bool:
    return not in_process(space.resources.workers_per_trial) and pool_enabled()


def trial_resources(space: SearchSpace) -> dict[str, float]:
    """What one trial reserves in all: for an in-process trial, its function holds the worker's
    CPUs/GPU; otherwise a token share for the function plus the TorchTrainer's workers."""
    r = space.resources
    if in_process(r.workers_per_trial):
        return {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if r.gpus_per_worker else {})}
    return {"CPU": TRIAL_FUNCTION_CPU}


class FixedPointsFirst(Searcher):
    """Proposes the space's fixed points first, then asks ``inner`` (a Tune ``Searcher``).

    Points (e.g. the reference project's hand-set ratios) are not fed back to the inner
    searcher: they are baselines, not samples of its distributions.
    """

    def __init__(self, inner: Searcher, points: list[dict]):
        super().__init__(metric=inner.metric, mode=inner.mode)
        self.inner = inner
        self.points = [dict(p) for p in points]
        self.next_point = 0
        self.point_trials: set[str] = set()
        self.keys: list[str] = []

    def set_search_properties(self, metric, mode, config, **spec):
        self.keys = list(config)
        return self.inner.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str):
        if self.next_point < len(self.points):
            self.point_trials.add(trial_id)
            self.next_point += 1
            # Keys a point does not set are None, never left as unsampled distributions.
            return {**dict.fromkeys(self.keys), **copy.deepcopy(self.points[self.next_point - 1])}
        return self.inner.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self.point_trials:
            self.inner.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id not in self.point_trials:
            self.inner.on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        # One file: Tune writes it to a temporary name and renames it, so no side files.
        with tempfile.TemporaryDirectory() as d:
            self.inner.save(os.path.join(d, "inner.pkl"))
            inner = Path(d, "inner.pkl").read_bytes()
        state = {"next_point": self.next_point, "point_trials": self.point_trials, "points": self.points, "keys": self.keys}
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"state": state, "inner": inner}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            saved = pickle.load(f)
        self.__dict__.update(saved["state"])
        with tempfile.TemporaryDirectory() as d:
            Path(d, "inner.pkl").write_bytes(saved["inner"])
            self.inner.restore(os.path.join(d, "inner.pkl"))


def _optuna_sampler(space: SearchSpace):
    import optuna

    samplers = {
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=space.seed),
        "tpe": lambda: optuna.samplers.TPESampler(seed=space.seed, multivariate=True),
        "random": lambda: optuna.samplers.RandomSampler(seed=space.seed),
    }
    return samplers["random" if space.search == "random" else space.sampler]()


def build_search_alg(space: SearchSpace, points: list[dict]):
    """``random`` and ``optuna`` go through Ray Tune's OptunaSearch (multi-objective); ``grid``
    through Tune's variant generator over the ``grid_search`` choices."""
    if space.search == "grid":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(points_to_evaluate=points or None, random_state=space.seed)
    from ray.tune.search.optuna import OptunaSearch

    metrics = list(space.objectives)
    modes = [space.objectives[m] for m in metrics]
    inner = OptunaSearch(metric=metrics, mode=modes, sampler=_optuna_sampler(space))
    return FixedPointsFirst(inner, points)


def build_scheduler(space: SearchSpace):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    schedulers = {
        "fifo": lambda: FIFOScheduler(),
        # Train V2 reports no training_iteration of its own: rungs are counted in epochs.
        "asha": lambda: ASHAScheduler(
            metric="accuracy", mode="max", time_attr="epoch",
            grace_period=space.asha.grace_period, reduction_factor=space.asha.reduction_factor,
        ),
    }
    return schedulers[space.scheduler]()


def trial_dirname(trial) -> str:
    """``<experiment>/<trial_id>/``: Tune's default name spells out the whole config."""
    return trial.trial_id


def max_concurrent_trials(space: SearchSpace) -> int:
    """As many trials as the cluster holds at once, so no trial waits forever for workers."""
    import ray

    res = ray.cluster_resources()
    r = space.resources
    if in_process(r.workers_per_trial):
        per_trial_cpu = r.cpus_per_worker
    else:
        per_trial_cpu = r.workers_per_trial * r.cpus_per_worker + TRIAL_FUNCTION_CPU
    fits = math.floor(res.get("CPU", 0) / per_trial_cpu + 1e-9)
    if r.gpus_per_worker:
        fits = min(fits, math.floor(res.get("GPU", 0) / (r.workers_per_trial * r.gpus_per_worker)))
    if fits < 1:
        raise ValueError(
            f"one trial needs {r.workers_per_trial} workers x {r.cpus_per_worker} CPU"
            f"{f' x {r.gpus_per_worker} GPU' if r.gpus_per_worker else ''}; the Ray cluster has {res}"
        )
    return fits


def base_run_config(space: SearchSpace, weight_file: Optional[str]) -> RunConfig:
    r = space.resources
    return RunConfig(
        model=space.model, dataset=space.dataset, data_root=space.data_root, weight_file=weight_file,
        seed=space.seed, workers=r.workers_per_trial, cpus_per_worker=r.cpus_per_worker,
        use_gpu=bool(r.gpus_per_worker), max_failures=0, print_freq=0,
        measure_latency=space.measure_latency or bool(LATENCY_OBJECTIVES & set(space.objectives)),
    )


def dense_weights(space: SearchSpace, storage: Path, address: Optional[str]) -> str:
    """A weights path for every trial: the space's file, or one dense training cached per
    model/dataset/recipe under ``<storage>/dense/`` (never one per trial)."""
    if space.dense != "train":
        return space.dense
    name = f"{space.dataset}-{space.model}-e{space.dense_epochs}-lr{space.dense_lr:g}-s{space.seed}"
    cached = storage / "dense" / name / "final.pt"
    if cached.is_file():
        log.info("dense weights: cached %s", cached)
        return str(cached)
    log.info("dense weights: training %s once (%d epochs)", name, space.dense_epochs)
    cfg = base_run_config(space, None)
    cfg.epochs, cfg.lr, cfg.output, cfg.name, cfg.max_failures = space.dense_epochs, space.dense_lr, str(storage / "dense"), name, 1
    cfg.workers = 1
    result = execute(cfg, resume=True, address=address)
    return str(result.final_checkpoint)


def progress_reporter(space: SearchSpace):
    from ray.tune import CLIReporter

    columns = {"target_sparsity": "target", "accuracy": "acc", "sparsity": "sparsity", "epoch": "epoch"}
    columns.update({k: k for k in space.objectives if k not in columns})
    return CLIReporter(
        parameter_columns={"method": "method", "schedule": "schedule", "point": "point"},
        metric_columns=columns, max_report_frequency=15, sort_by_metric=False,
    )


def run_sweep(space: SearchSpace, storage: Path, name: str, *, resume: bool = False, address: Optional[str] = None) -> Path:
    """Run (or resume) the sweep; returns the experiment directory. Inputs must be checked."""
    for key, value in TUNE_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    init_ray(address)
    storage = storage.expanduser().resolve()
    weights = dense_weights(space, storage, address)
    exp_dir = storage / name
    base = base_run_config(space, weights)
    # As many trials at once as worker groups: each running trial has a group to train in.
    concurrency = max_concurrent_trials(space)
    workers = WorkerPool(base, concurrency, exp_dir) if uses_pool(space) else None
    if workers is not None:
        workers.start()
    try:
        context = SweepContext(
            space, base, str(exp_dir / "trials"), in_process=in_process(space.resources.workers_per_trial),
            dispatcher=workers.dispatcher if workers else None,
        )
        _tuner(space, context, exp_dir, name, storage, resume, concurrency).fit()
    finally:
        if workers is not None:
            workers.stop()
    return exp_dir


def _tuner(space: SearchSpace, context: SweepContext, exp_dir: Path, name: str, storage: Path, resume: bool, concurrency: int):
    import ray.tune as tune

    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), trial_resources(space))
    if resume and tune.Tuner.can_restore(str(exp_dir)):
        log.info("resuming %s: finished trials are kept, unfinished ones continue", exp_dir)
        return tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True, resume_errored=False)
    param_space, points = to_tune(space)
    if points:
        param_space["point"] = -1
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=build_search_alg(space, points),
            scheduler=build_scheduler(space),
            # grid: the whole grid once (plus the points); otherwise `trials` samples + points
            num_samples=1 if space.search == "grid" else space.trials + len(points),
            max_concurrent_trials=concurrency,
            # Every trial asks for the same resources: a finished trial's process (torch
            # imported, data loaded) takes the next one instead of a fresh process each time.
            reuse_actors=True,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=str(storage), progress_reporter=progress_reporter(space),
            failure_config=tune.FailureConfig(max_failures=0),
            # Stops a trial's training in its worker group when Tune ends the trial (ASHA).
            callbacks=[PoolCallback()],
        ),
    )
