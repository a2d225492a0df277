"""raysweep from Python: run a sweep, load one, and read it (notebooks, scripts).

    import raysweep
    sweep = raysweep.run("digits", trials=8, epochs=2)          # a shipped name, a YAML path or a dict
    sweep = raysweep.run(my_space, model=MyNet, dataset=my_data)  # callables are shipped to the workers
    sweep = raysweep.load_sweep("raysweep_results/digits-default")
    sweep.front(); sweep.best(max_drop=0.01); model = sweep.load_model(trial_id)

Errors are exceptions (``ValueError`` subclasses with the message the CLI would print).
"""
from __future__ import annotations

import functools
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import pandas as pd

from raysweep.errors import RunInputError

log = logging.getLogger("raysweep.api")

SpaceSpec = Union[str, Path, Mapping[str, Any], None]


def run(space: SpaceSpec = None, *, storage: Union[str, Path] = "raysweep_results", name: Optional[str] = None,
        resume: bool = False, address: Optional[str] = None, verbose: bool = False, **fields: Any) -> "Sweep":  # fmt: skip
    """Run (or resume) a sweep and return it. ``fields`` replace the space's own (``trials=8``,
    ``epochs=2``, ``model=MyNet``...); ``model`` and ``dataset`` may be Python callables, which
    Ray ships to its workers by value (raysweep.models.external, raysweep.data)."""
    from raysweep.errors import check_name
    from raysweep.space import load_space
    from raysweep.sweep.driver import run_sweep
    from raysweep.sweep.inputs import check_space_inputs, check_storage, experiment_name, resume_space, sweep_info

    folder = check_storage(str(storage))
    if resume:
        name = check_name(name or load_space(space, fields=fields).name)
        checked = resume_space(folder / name, space, [], fields)
    else:
        checked = load_space(space, fields=fields)
        name = experiment_name(folder, check_name(name or checked.name), False)
    check_space_inputs(checked)
    if not verbose:  # Optuna announces every study it creates; the progress lines say enough
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    _ship_by_value(checked.model, checked.dataset)
    info = None if resume else sweep_info(name, space if isinstance(space, str) else None, [], checked)
    result = run_sweep(checked, folder, name, resume=resume, address=address, info=info, verbose=verbose)
    sweep = Sweep(result.exp_dir, model=_callable(checked.model), dataset=_callable(checked.dataset))
    sweep.report()
    if result.storage_error is not None:
        raise RunInputError(f"the storage failed under the trials: {result.storage_error}")
    return sweep


def load_sweep(path: Union[str, Path], *, model: Optional[Callable] = None, dataset: Optional[Callable] = None) -> "Sweep":
    """A finished or interrupted sweep's folder. ``model``/``dataset``: the callables it ran
    with, when they were Python objects rather than names (needed by ``load_model``)."""
    from raysweep import storage

    folder = storage.absolute(path)  # a folder, or a storage URI (s3://bucket/prefix/<name>)
    try:
        found = storage.is_dir(folder)
    except OSError as exc:
        raise RunInputError(f"cannot read {folder}: {exc}") from None
    if not found:
        raise RunInputError(f"no sweep at {folder}")
    return Sweep(folder, model=model, dataset=dataset)


def _callable(value: Any) -> Optional[Callable]:
    return value if callable(value) else None


def _ship_by_value(*objects: Any) -> None:
    """A notebook's or a script's callables reach Ray's workers by value: their module (``__main__``,
    a test module) is not importable there. Installed packages keep travelling by reference."""
    import ray.cloudpickle as cloudpickle  # Ray's own copy: the one that pickles what Ray ships

    for obj in objects:
        module = sys.modules.get(getattr(obj, "__module__", "") or "") if callable(obj) else None
        origin = getattr(module, "__file__", None) or ""
        if module is not None and module.__name__ != "__main__" and "site-packages" not in origin:
            cloudpickle.register_pickle_by_value(module)


@dataclass
class Sweep:
    """One sweep's folder and what is in it (``trials.csv`` and friends, rebuilt if missing)."""

    path: Union[Path, str]  # a folder, or a storage URI
    model: Optional[Callable] = None
    dataset: Optional[Callable] = None
    _trials: Optional[pd.DataFrame] = field(default=None, repr=False)

    @property
    def info(self) -> dict[str, Any]:
        from raysweep.results.collect import load_sweep_info

        return load_sweep_info(self.path)

    @property
    def objectives(self) -> dict[str, str]:
        from raysweep.results.pareto import DEFAULT_OBJECTIVES

        return dict(self.info.get("objectives") or DEFAULT_OBJECTIVES)

    @property
    def trials(self) -> pd.DataFrame:
        """trials.csv: one row per trial (README lists the columns)."""
        if self._trials is None:
            from raysweep import storage

            table = storage.join(self.path, "trials.csv")
            if not storage.is_file(table):
                self.report()
            with storage.open_input(table) as f:
                self._trials = pd.read_csv(f)
        return self._trials

    @property
    def dense(self) -> dict[str, Any]:
        """The dense model's accuracy, top5, params_total and macs_dense, as the trials were measured."""
        return dict(self.info.get("dense") or {})

    def report(self) -> dict[str, Path]:
        """Rebuild trials.csv, pareto.csv, report.md/html and the plots."""
        from raysweep.results.collect import build_reports

        self._trials = None
        return build_reports(self.path)

    def finished(self, method: Optional[str] = None) -> pd.DataFrame:
        from raysweep.results.status import finished_mask

        done = self.trials[finished_mask(self.trials)]
        return done if method is None else done[done["method"] == method]

    def front(self, objectives: Optional[Mapping[str, str]] = None, method: Optional[str] = None) -> pd.DataFrame:
        """The non-dominated finished trials (of ``method``), on the sweep's objectives by default."""
        from raysweep.results.pareto import pareto_front

        return pareto_front(self.finished(method), dict(objectives or self.objectives))

    def hypervolume(self, objectives: Optional[Mapping[str, str]] = None, reference: Any = None,
                    method: Optional[str] = None) -> float:  # fmt: skip
        from raysweep.results.pareto import hypervolume

        return hypervolume(self.finished(method), dict(objectives or self.objectives), reference)

    def best(self, min_sparsity: Optional[float] = None, max_drop: Optional[float] = None) -> pd.Series:
        """With ``max_drop`` (a fraction of accuracy below dense): the most compressed finished
        trial that stays within it. With ``min_sparsity``: the most accurate trial at least that
        sparse. Both: the most compressed one meeting both. A LookupError when none does."""
        done = self.finished()
        if min_sparsity is not None:
            done = done[done["sparsity"] >= min_sparsity - 1e-9]
        if max_drop is not None:
            if "accuracy" not in self.dense:
                raise LookupError(f"max_drop needs the dense baseline, which {self.path} does not have")
            done = done[done["accuracy"] >= self.dense["accuracy"] - max_drop - 1e-9]
        if done.empty:
            raise LookupError(f"no finished trial with sparsity >= {min_sparsity} and accuracy drop <= {max_drop}")
        order = ["sparsity", "accuracy"] if max_drop is not None else ["accuracy", "sparsity"]
        return done.sort_values(order, ascending=False, kind="stable").iloc[0]

    def checkpoint(self, trial_id: str) -> Union[Path, str]:
        from raysweep import storage
        from raysweep.trial.checkpoint import CheckpointFolder

        newest = CheckpointFolder(storage.join(self.path, "trials", trial_id)).newest_path()
        if newest is None:
            raise LookupError(f"trial {trial_id!r} of {self.path} has no checkpoint")
        return newest

    def load_model(self, trial_id: str):
        """The trial's pruned model, masks squashed into plain weights, in eval mode."""
        import pruners
        from raysweep.trial.checkpoint import read_checkpoint

        saved = read_checkpoint(self.checkpoint(trial_id))
        cfg = saved.config
        num_classes, input_size = _shape(cfg, self.dataset)
        model = _build(cfg.get("model"), self.model, num_classes, input_size, cfg.get("dataset"))
        pruners.load_masked_state_dict(model, saved.model)
        return pruners.squash(model).eval()


def _shape(cfg: Mapping[str, Any], dataset: Optional[Callable]) -> tuple[int, tuple[int, ...]]:
    """num_classes and input_size of a trial's data (its config's dataset, or the callable it ran with)."""
    if cfg.get("num_classes") and cfg.get("input_size"):
        return int(cfg["num_classes"]), tuple(cfg["input_size"])
    from raysweep.space.targets import freeze

    info = _dataset_info(dataset or cfg.get("dataset"), cfg.get("data_root"), freeze(cfg.get("dataset_options")))
    return info.num_classes, tuple(info.input_size)


@functools.lru_cache(maxsize=4)
def _dataset_info(dataset: Any, data_root: Optional[str], options: tuple = ()):
    from raysweep.data import build_datasets

    return build_datasets(dataset, data_root, options={k: list(v) if isinstance(v, tuple) else v for k, v in options})[2]


def _build(name: Any, given: Optional[Callable], num_classes: int, input_size: tuple[int, ...], dataset: Any):
    from raysweep.models import create_model, describe

    if given is not None and (not isinstance(name, str) or name == describe(given)):
        name = given
    return create_model(name, num_classes=num_classes, input_size=input_size, dataset=dataset if isinstance(dataset, str) else None)
