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
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from raysweep import ray_env
from raysweep import storage as locations
from raysweep.config import folder_label
from raysweep.errors import RunInputError, first_line
from raysweep.results.collect import load_sweep_info, save_sweep_info
from raysweep.space import DENSE_TRAIN, SearchSpace, to_tune, trial_run_config
from raysweep.space.tune import base_run_config
from raysweep.sweep import pool  # noqa: F401 -- registers the `pool` executor
from raysweep.sweep.baseline import dense_baseline, record_baseline
from raysweep.sweep.executors import EXECUTORS, Executor, SweepContext, get_executor, max_concurrent_trials, trial_folder
from raysweep.sweep.guard import Interruptions, StorageGuard
from raysweep.sweep.progress import ProgressView
from raysweep.sweep.search_algs import build_scheduler, build_search_alg, trial_dirname
from raysweep.sweep.tracking import Tracker, start_tracking
from raysweep.trial.checkpoint import STORAGE_ERRORS, StorageError, record_failure, recorded_failure

log = logging.getLogger("raysweep.sweep")


class FailedBefore(RuntimeError):
    """A resumed trial that had failed on its own: its recorded error, without training again."""


def run_trial(config: dict[str, Any], context: SweepContext) -> None:
    """Tune function trainable: one trial's fine-tune, wherever the sweep's executor trains it.

    A trial that fails on its own records why in its folder; a resumed sweep (which retries the
    trials that failed, so that those the storage failed under run again) fails it again at once."""
    import ray.tune

    trial_id = ray.tune.get_context().get_trial_id()
    folder = trial_folder(context, trial_id)
    before = recorded_failure(folder)
    if before is not None:
        raise FailedBefore(before)
    cfg = trial_run_config(context.space, config, context.base)
    cfg.name = trial_id
    try:
        EXECUTORS[context.executor].run(context, cfg, trial_id)
    except StorageError:
        raise
    except Exception as exc:
        record_failure(folder, f"{type(exc).__name__}: {first_line(exc)}")
        raise


def dense_weights(space: SearchSpace, storage: locations.Location, address: Optional[str]) -> str:
    """A weights path for every trial: the space's file, or one dense training cached per
    model/dataset/recipe under ``<storage>/dense/`` (never one per trial)."""
    if space.dense != DENSE_TRAIN:
        return space.dense
    name = f"{folder_label(space.dataset)}-{folder_label(space.model)}-e{space.dense_epochs}-lr{space.dense_lr:g}-s{space.seed}"
    cached = locations.join(storage, "dense", name, "final.pt")
    if locations.is_file(cached):
        log.info("dense weights: cached %s", cached)
        return str(cached)
    log.info("dense weights: training %s once (%d epochs)", name, space.dense_epochs)
    cfg = base_run_config(space, None)
    cfg.epochs, cfg.lr, cfg.output, cfg.name, cfg.max_failures = space.dense_epochs, space.dense_lr, str(locations.join(storage, "dense")), name, 1
    cfg.workers = 1
    from raysweep.trial.runner import execute

    result = execute(cfg, resume=True, address=address)
    return str(result.final_checkpoint)


def planned_trials(space: SearchSpace) -> Optional[int]:
    """Trials Tune will run (unknown for a grid: its size comes from the grid)."""
    return None if space.search == "grid" else space.trials + len(space.points)


@dataclass
class SweepRun:
    """How a sweep ended: its folder, and what stopped it early, if anything."""

    exp_dir: locations.Location  # <storage>/<name>: a folder or a URI
    signal_exit: Optional[int] = None  # 130 (SIGINT) / 143 (SIGTERM): stopped with trials unfinished
    storage_error: Optional[StorageError] = None  # the storage failed under the trials
    trackers: list[Tracker] = field(default_factory=list)  # to hand the reports to (finish_tracking)


def run_sweep(space: SearchSpace, storage: locations.Location, name: str, *, resume: bool = False, address: Optional[str] = None,
              info: Optional[dict[str, Any]] = None, verbose: bool = False) -> SweepRun:  # fmt: skip
    """Run (or resume) the sweep. Inputs must be checked.

    The trials must fit the machine before a local Ray starts, and the cluster right after
    connecting: a sweep that cannot run trains nothing and writes nothing. ``info`` becomes
    the experiment's sweep.json once it can run. Ctrl-C, SIGTERM and a failing storage stop it
    gracefully (raysweep.sweep.guard); ``verbose`` shows the workers' logs on the console."""
    import ray

    ray_env.apply_ray_env_defaults(ray_env.TUNE_ENV_DEFAULTS)
    executor = get_executor(space)
    if not ray_env.joins_a_cluster(address):
        fits(executor, ray_env.local_resources(), "this machine")
    ray_env.init_ray(address, log_to_driver=verbose)
    concurrency = sweep_concurrency(space, executor, ray.cluster_resources(), "the Ray cluster")
    storage = locations.absolute(storage)
    exp_dir = locations.join(storage, name)
    # Before anything is written: a tracker that cannot start is bad input, like the storage.
    trackers = start_tracking(space, exp_dir)
    if info is not None:
        try:
            save_sweep_info(exp_dir, info)
        except STORAGE_ERRORS as exc:  # the first write: credentials that may read but not write
            raise RunInputError(f"--storage: cannot write in {exp_dir}: {first_line(exc)}") from None
    with Interruptions() as interruptions:
        weights = dense_weights(space, storage, address)
        base = base_run_config(space, weights)
        if "dense" not in load_sweep_info(exp_dir):  # a resumed sweep has its baseline already
            record_baseline(exp_dir, dense_baseline(space, weights, base.to_dict()))
        dispatcher = executor.start(base, concurrency, exp_dir, planned_trials(space))
        guard = StorageGuard()
        progress = ProgressView(planned_trials(space), concurrency, header=_header(space, name, exp_dir, executor, concurrency, resume))
        try:
            context = SweepContext(space, base, str(locations.join(exp_dir, "trials")), executor.name, dispatcher)
            tuner = _tuner(space, context, executor, exp_dir, name, storage, resume, concurrency)
            tracking = [c for t in trackers for c in t.callbacks()]
            _use_callbacks(tuner, [*executor.callbacks(), *tracking, guard, progress])
            sigint = _SigintMarker()
            try:
                tuner.fit()
            finally:
                sigint_seen = sigint.seen()
        finally:
            executor.stop()
    signal_exit = None
    if progress.unfinished() and not guard.tripped:
        signal_exit = 143 if interruptions.received == signal.SIGTERM else 130 if sigint_seen else None
    return SweepRun(exp_dir, signal_exit, guard.error, trackers)


class _SigintMarker:
    """Whether Tune caught a Ctrl-C during ``fit``: its handler puts back the one it found (this
    marker) when a SIGINT comes, and stays installed otherwise."""

    def __init__(self) -> None:
        self.previous = signal.getsignal(signal.SIGINT)
        # Off the main thread (a sweep run from a thread) there are no handlers to watch.
        self.installed = threading.current_thread() is threading.main_thread()
        if self.installed:
            signal.signal(signal.SIGINT, self._marker)

    @staticmethod
    def _marker(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def seen(self) -> bool:
        if not self.installed:
            return False
        seen = signal.getsignal(signal.SIGINT) is self._marker
        signal.signal(signal.SIGINT, self.previous)
        return seen


def _header(space: SearchSpace, name: str, exp_dir: Path, executor: Executor, concurrency: int, resume: bool) -> str:
    planned = planned_trials(space)
    count = "a grid of trials" if planned is None else f"{planned} trials ({len(space.points)} fixed points + {space.trials} searched)"
    return f"{'resuming' if resume else 'sweep'} {name}: {count}; {executor.describe(concurrency)}; results in {exp_dir}"


def _use_callbacks(tuner: Any, callbacks: list) -> None:
    """This driver's callbacks and console, also on a resume: ``Tuner.restore`` brings back the
    run config pickled with the experiment (an earlier driver's progress view, its pool's
    dispatcher name, an older version's progress table)."""
    run_config = tuner._local_tuner.get_run_config()
    run_config.callbacks, run_config.verbose, run_config.progress_reporter = callbacks, 0, None


def sweep_concurrency(space: SearchSpace, executor: Executor, cluster: dict[str, float], where: str) -> int:
    """As many trials at once as fit, and no more than the sweep plans: the pool starts one worker
    group per trial it can run at once, so a one-trial sweep on a big cluster starts one group."""
    concurrency = fits(executor, cluster, where)
    return min(concurrency, planned_trials(space) or concurrency)


def fits(executor: Executor, resources: dict[str, float], where: str) -> int:
    try:
        return max_concurrent_trials(executor, resources, where)
    except ValueError as exc:
        raise RunInputError(str(exc)) from None


def _tuner(space: SearchSpace, context: SweepContext, executor: Executor, exp_dir: locations.Location, name: str,
           storage: locations.Location, resume: bool, concurrency: int):  # fmt: skip
    import ray.tune as tune

    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), executor.trial_resources())
    storage_path, fs = tune_storage(storage)
    experiment = str(exp_dir) if fs is None else f"{storage_path}/{name}"
    if resume and tune.Tuner.can_restore(experiment, storage_filesystem=fs):
        log.info("resuming %s: finished trials are kept, unfinished ones continue", exp_dir)
        # Failed trials are retried too: those the storage failed under train again, those that
        # failed on their own fail again at once with their recorded error (run_trial).
        started = time.monotonic()
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=fs)
        log.info("restored the experiment from %s in %.1f s", exp_dir, time.monotonic() - started)
        return tuner
    param_space, points = to_tune(space)
    if points:
        param_space["point"] = -1
    run_config = tune.RunConfig(
        name=name, storage_path=storage_path, storage_filesystem=fs, verbose=0,
        failure_config=tune.FailureConfig(max_failures=0), callbacks=executor.callbacks(),
    )  # fmt: skip
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config(space, points, concurrency), run_config=run_config)


def tune_storage(storage: locations.Location) -> tuple[str, Any]:
    """``(storage_path, storage_filesystem)`` for Tune: a folder as it is; a URI as the path on
    the filesystem raysweep writes through, so that Tune and raysweep see the same objects."""
    if not locations.is_uri(storage):
        return str(storage), None
    fs, path = locations.resolve(storage)
    return path, fs


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
