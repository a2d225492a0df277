"""The sweep on Ray Tune: the driver that checks, starts, runs and collects one sweep.

Layout of an experiment, ``<storage>/<name>/``:
  Ray Tune's own experiment state and trial folders (``<trial_id>/``: params, results),
  ``trials/<trial_id>/``   each trial's checkpoints (``checkpoint_epochNNNN/``; a ``trainer``
                           trial's own Ray Train run),
  ``pool/<start time>/``   the Ray Train runs of the ``pool`` executor's worker groups,
  ``sweep.json``           the space and overrides it ran with (raysweep.results.collect),
  ``trials.csv``, ``pareto.csv``, ``report.md``, ``report.html``, ``pareto.png``.
Dense weights trained by the sweep are cached in ``<storage>/dense/`` and shared by every trial.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from raysweep import ray_env
from raysweep.config import RunConfig
from raysweep.errors import RunInputError
from raysweep.results.collect import save_sweep_info
from raysweep.space import DENSE_TRAIN, LATENCY_OBJECTIVES, SearchSpace, to_tune, trial_run_config
from raysweep.sweep import pool  # noqa: F401 -- registers the `pool` executor
from raysweep.sweep.executors import EXECUTORS, Executor, SweepContext, get_executor, max_concurrent_trials
from raysweep.sweep.search_algs import build_scheduler, build_search_alg, progress_reporter, trial_dirname

log = logging.getLogger("raysweep.sweep")


def run_trial(config: dict[str, Any], context: SweepContext) -> None:
    """Tune function trainable: one trial's fine-tune, wherever the sweep's executor trains it."""
    import ray.tune

    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_run_config(context.space, config, context.base)
    cfg.name = trial_id
    EXECUTORS[context.executor].run(context, cfg, trial_id)


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
    if space.dense != DENSE_TRAIN:
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
    from raysweep.trial.runner import execute

    result = execute(cfg, resume=True, address=address)
    return str(result.final_checkpoint)


def planned_trials(space: SearchSpace) -> Optional[int]:
    """Trials Tune will run (unknown for a grid: its size comes from the grid)."""
    return None if space.search == "grid" else space.trials + len(space.points)


def run_sweep(space: SearchSpace, storage: Path, name: str, *, resume: bool = False, address: Optional[str] = None,
              info: Optional[dict[str, Any]] = None) -> Path:  # fmt: skip
    """Run (or resume) the sweep; returns the experiment directory. Inputs must be checked.

    The trials must fit the machine before a local Ray starts, and the cluster right after
    connecting: a sweep that cannot run trains nothing and writes nothing. ``info`` becomes
    the experiment's sweep.json once it can run."""
    import ray

    ray_env.apply_ray_env_defaults(ray_env.TUNE_ENV_DEFAULTS)
    executor = get_executor(space)
    if not ray_env.joins_a_cluster(address):
        fits(executor, ray_env.local_resources(), "this machine")
    ray_env.init_ray(address)
    # As many trials at once as fit; the pool starts as many worker groups, one per running trial.
    concurrency = fits(executor, ray.cluster_resources(), "the Ray cluster")
    storage = storage.expanduser().resolve()
    exp_dir = storage / name
    if info is not None:
        save_sweep_info(exp_dir, info)
    weights = dense_weights(space, storage, address)
    base = base_run_config(space, weights)
    log.info("sweep %s: %s", name, executor.describe(concurrency))
    dispatcher = executor.start(base, concurrency, exp_dir, planned_trials(space))
    try:
        context = SweepContext(space, base, str(exp_dir / "trials"), executor.name, dispatcher)
        _tuner(space, context, executor, exp_dir, name, storage, resume, concurrency).fit()
    finally:
        executor.stop()
    return exp_dir


def fits(executor: Executor, resources: dict[str, float], where: str) -> int:
    try:
        return max_concurrent_trials(executor, resources, where)
    except ValueError as exc:
        raise RunInputError(str(exc)) from None


def _tuner(space: SearchSpace, context: SweepContext, executor: Executor, exp_dir: Path, name: str, storage: Path,
           resume: bool, concurrency: int):  # fmt: skip
    import ray.tune as tune

    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), executor.trial_resources())
    if resume and tune.Tuner.can_restore(str(exp_dir)):
        log.info("resuming %s: finished trials are kept, unfinished ones continue", exp_dir)
        return tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True, resume_errored=False)
    param_space, points = to_tune(space)
    if points:
        param_space["point"] = -1
    run_config = tune.RunConfig(
        name=name, storage_path=str(storage), progress_reporter=progress_reporter(space),
        failure_config=tune.FailureConfig(max_failures=0), callbacks=executor.callbacks(),
    )  # fmt: skip
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config(space, points, concurrency), run_config=run_config)


def tune_config(space: SearchSpace, points: list[dict], concurrency: int):
    """What Tune gets: the search algorithm, the scheduler, how many trials and how many at once."""
    import ray.tune as tune

    return tune.TuneConfig(
        search_alg=build_search_alg(space, points),
        scheduler=build_scheduler(space),
        # grid: the whole grid once (plus the points); otherwise `trials` samples + points
        num_samples=1 if space.search == "grid" else space.trials + len(points),
        max_concurrent_trials=concurrency,
        # Every trial asks for the same resources: a finished trial's process (torch imported,
        # data loaded) takes the next one instead of a fresh process each time.
        reuse_actors=True,
        trial_dirname_creator=trial_dirname,
    )
