"""How a sweep searches: the search algorithm (fixed points first, then Optuna, grid or random)
and the trial scheduler (FIFO, ASHA)."""
from __future__ import annotations

import copy
import os
import pickle
import tempfile
from pathlib import Path
from typing import Optional

from ray.tune.search import Searcher

from raysweep.space import SearchSpace


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
