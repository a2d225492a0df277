"""What a sweep checks before Ray starts: its name, its storage, its data and dense weights, and
on ``--resume`` the space it was saved with. Each problem is one ``RunInputError`` (exit 2)."""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

from raysweep import storage as locations
from raysweep.errors import RunInputError, check_name  # noqa: F401 -- check_name: the CLI's name check
from raysweep.results.collect import SWEEP_FILE, load_sweep_info
from raysweep.space import DENSE_TRAIN, SearchSpace, SpaceError, load_space, to_mapping

log = logging.getLogger("raysweep.sweep")

# More searched trials than this is a typo, not a plan (a sweep that would never end).
MAX_TRIALS = 100_000
MANY_TRIALS = 1_000


def check_storage(storage: str) -> locations.Location:
    """The storage folder, absolute; it need not exist yet, but must be creatable and writable.
    Nothing is created here: a sweep that never starts leaves no folder behind.

    A URI (``s3://bucket/prefix``, raysweep.storage) must name a known scheme and a bucket that
    exists, and its credentials must be accepted, all within
    ``RAYSWEEP_STORAGE_TIMEOUT_S`` (default 30). Nothing is written there before the sweep can run."""
    if locations.is_uri(storage):
        uri = str(locations.location(storage))
        try:
            locations.probe(uri, locations.storage_timeout())
        except ValueError as exc:
            raise RunInputError(f"--storage: {exc}") from None
        return uri
    path = Path(storage).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise RunInputError(f"--storage {path} is a file, not a folder")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise RunInputError(f"--storage {path}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise RunInputError(f"--storage {path}: cannot write in {existing} ([Errno {exc.errno}] {exc.strerror})") from None
    return path


def experiment_name(storage: locations.Location, name: str, resume: bool) -> str:
    """A new sweep never mixes with an old one: ``name``, ``name-2``, ...; --resume keeps it.
    A folder that holds no more than a sweep.json is a sweep that never started: its name is free."""
    if resume:
        return name
    candidate, n = name, 1
    while any(entry.name != SWEEP_FILE for entry in locations.listdir(locations.join(storage, candidate))):
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def check_space_inputs(space: SearchSpace) -> None:
    """Data and dense weights must exist before Ray starts (the space itself is already valid)."""
    from raysweep.data import build_datasets

    try:
        _, val, info = build_datasets(space.dataset, space.data_root, options=space.dataset_options)
    except (ValueError, FileNotFoundError) as exc:
        raise RunInputError(str(exc)) from None
    if space.dense != DENSE_TRAIN and not _weights_found(space.dense):
        raise RunInputError(f"dense weights not found: {space.dense} (set `dense: train` to train them once)")
    check_model_on_data(space.model, space.dataset, val, info)
    from raysweep.sweep.tracking import check_tracking

    check_tracking(space)
    if space.trials > MAX_TRIALS:
        raise RunInputError(f"trials: {space.trials} searched trials is more than {MAX_TRIALS}; a sweep that large never ends")
    if space.trials > MANY_TRIALS:
        log.warning("trials: %d searched trials; at a few seconds each on one machine that is hours to days "
                    "(Ctrl-C stops it with its reports written, --resume continues it)", space.trials)  # fmt: skip


def _weights_found(path: str) -> bool:
    """A weights file, or an object behind a URI (its storage checked first, as --storage is)."""
    if not locations.is_uri(path):
        return os.path.isfile(path)
    try:
        locations.probe(str(locations.parent(path)), locations.storage_timeout())
    except ValueError as exc:
        raise RunInputError(f"dense weights {path}: {exc}") from None
    return locations.is_file(path)


def check_model_on_data(model: Any, dataset: Any, val: Any, info: Any) -> None:
    """The model builds for the data's classes and input size, and one val sample runs through it
    to one score per class: a user's model meets the user's data here, not in every trial."""
    from raysweep.models import check_on_sample, create_model, describe

    try:
        net = create_model(model, num_classes=info.num_classes, input_size=tuple(info.input_size),
                           dataset=dataset if isinstance(dataset, str) else None)  # fmt: skip
        check_on_sample(net, val[0], info.num_classes, describe(model))
    except (ValueError, FileNotFoundError) as exc:
        raise RunInputError(str(exc)) from None


def sweep_info(name: str, spec: Optional[str], overrides: Sequence[str], space: SearchSpace) -> dict[str, Any]:
    """What sweep.json keeps: enough to rebuild the reports and to resume the very same space."""
    return {"name": name, "space": spec or "digits", "overrides": list(overrides), "objectives": space.objectives,
            "space_mapping": to_mapping(space)}  # fmt: skip


def resume_space(exp_dir: Path, spec: Optional[Any], overrides: Sequence[str], fields: Optional[dict[str, Any]] = None) -> SearchSpace:
    """The space a sweep was saved with. ``--space``/``--set`` (or ``raysweep.run``'s fields)
    given again must describe that same space: a resume cannot change what is searched (start a
    new sweep for that); given that way, the space keeps its Python callables."""
    if not locations.is_dir(exp_dir):
        raise RunInputError(f"--resume: no experiment at {exp_dir} (check --storage and --name)")
    info = load_sweep_info(exp_dir)
    # Written before sweep.json kept the space itself: the spec and overrides it was started with.
    source = info["space_mapping"] if "space_mapping" in info else info.get("space")
    try:
        saved = load_space(source, () if "space_mapping" in info else info.get("overrides", ()))
    except SpaceError as exc:
        raise RunInputError(f"--resume: the space saved in {locations.join(exp_dir, SWEEP_FILE)} no longer loads: {exc}") from None
    if spec is None and not overrides and not fields:
        return saved
    given = load_space(spec if spec is not None else source, overrides, fields)
    if _comparable(given) != _comparable(saved):
        changed = sorted(k for k, v in _comparable(given).items() if _comparable(saved).get(k) != v)
        raise RunInputError(
            f"--resume continues {locations.name(exp_dir)} with the space it was saved with; the given --space/--set change "
            f"{', '.join(changed)}. Drop them to resume, or start a new sweep (without --resume) to search a different space"
        )
    return dataclasses.replace(saved, tracking=given.tracking)  # where it is logged may change


def _comparable(space: SearchSpace) -> dict[str, Any]:
    mapping = to_mapping(space)
    mapping.pop("name", None)  # a file's stem vs the saved name: not what is searched
    mapping.pop("tracking", None)  # nor where it is logged
    return mapping
