"""A method's ``allocation`` section: per-layer ratios from one global target (``pruners.allocation``).

In a space::

    methods:
      irregular:
        allocation:
          family: {choice: [erk, lamp, uniform]}   # or one name; sensitivity needs `table`
          target: {uniform: [0.5, 0.95]}            # fraction of ALL prunable weights removed
          perturb: {"features.*": {uniform: [-0.1, 0.1]}}   # optional offsets per name/glob
          mode: add                                 # add (ratio + offset) | mul (ratio * (1 + offset))
          table: runs/sens/sensitivity.csv          # the `sensitivity` family's table
        "features.0.weight": 0.0                    # fixed layers: the others absorb the target

The family, target and offsets are searched like any value; the table is read once when the
space loads and travels inline with each trial (no file needed on the workers). Weight-based
families (``global_magnitude``, ``lamp``) are resolved in the training worker, where the
dense weights are loaded; the others could be resolved anywhere.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pruners
from pruners.allocation import (
    FAMILIES,
    PERTURB_MODES,
    SensitivityTable,
    check_method,
    expand_keys,
    get_family,
)
from pruners.selection import count_for_ratio
from raysweep.space.schema import Allocation, Dist, Param, candidates
from raysweep.space.targets import governing_keys
from raysweep.space.values import Problems, check_keys, join, one_of, parse_param

log = logging.getLogger("raysweep.space")

FIELDS = ("family", "target", "perturb", "mode", "table")


# ------------------------------------------------------------------------- value checks
def _family_check(value: Any) -> str | None:
    try:
        get_family(value)
    except ValueError as err:
        return str(err)
    return None


def _target_check(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0
    return None if ok else f"the global target is a fraction of prunable weights removed in [0, 1], got {value!r}"


def _offset_check(mode: str):
    low, high = (-1.0, 1.0) if mode == "add" else (-1.0, float("inf"))

    def check(value: Any) -> str | None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
        return None if ok else f"an offset (mode {mode}) must be a number in [{low:g}, {high:g}], got {value!r}"

    return check


def parse_allocation(method: str, raw: Any, where: str, problems: Problems, *, fixed: bool = False) -> Allocation | None:
    """An ``Allocation`` from the raw section, problems recorded; a bad value is left None (so the
    model checks still run on the rest), None when the section itself is unusable."""
    if not isinstance(raw, Mapping):
        problems.add(where, f"must be a mapping with {', '.join(FIELDS)}, got {raw!r}")
        return None
    check_keys(raw, FIELDS, where, problems)
    try:
        check_method(method)
    except ValueError as err:
        problems.add(where, str(err))
        return None
    for key in ("family", "target"):
        if key not in raw:
            problems.add(where, f"needs a {key!r}" + (f" (one of {', '.join(FAMILIES)})" if key == "family" else " in [0, 1]"))
    mode = raw.get("mode", "add")
    bad_mode = one_of("perturb mode", PERTURB_MODES)(mode)
    if bad_mode:
        problems.add(join(where, "mode"), bad_mode)
        mode = "add"
    family = parse_param(raw.get("family"), join(where, "family"), _family_check, problems, fixed=fixed) if "family" in raw else None
    target = parse_param(raw.get("target"), join(where, "target"), _target_check, problems, fixed=fixed) if "target" in raw else None
    perturb: dict[str, Param] = {}
    raw_perturb = raw.get("perturb") or {}
    if not isinstance(raw_perturb, Mapping):
        problems.add(join(where, "perturb"), f"must map parameter names or globs to offsets, got {raw_perturb!r}")
        raw_perturb = {}
    for key, value in raw_perturb.items():
        if not isinstance(key, str) or "/" in key:
            problems.add(join(where, "perturb"), f"parameter names and globs are strings without '/', got {key!r}")
            continue
        name = pruners.ratio_config.strip_module_prefix(key.strip())
        perturb[name] = parse_param(value, join(join(where, "perturb"), key), _offset_check(mode), problems, fixed=fixed)
    table, table_data = _read_table(raw.get("table"), family, join(where, "table"), problems)
    return Allocation(family, target, perturb, mode, table, table_data)


def _read_table(path: Any, family: Param, where: str, problems: Problems) -> tuple[str | None, dict | None]:
    wanted = any(isinstance(f, str) and f.strip().lower() == "sensitivity" for f in candidates(family)) if family is not None else False
    if path is None:
        if wanted:
            problems.add(where, "the 'sensitivity' family needs a table: the sensitivity.csv written by python -m raysweep.sensitivity")
        return None, None
    if not isinstance(path, str) or not path:
        problems.add(where, f"must be a path to a sensitivity.csv, got {path!r}")
        return None, None
    if not wanted and family is not None:
        log.warning("%s: a table is given but no family reads it (only 'sensitivity' does)", where)
    try:
        return path, SensitivityTable.read(path).to_dict()
    except ValueError as err:
        problems.add(where, str(err))
        return path, None


# ------------------------------------------------------------------------- checks against the model
def check_allocation(model: Any, alloc: Allocation, targets: Mapping[str, Param], where: str, problems: Problems) -> None:
    """Perturb keys match layers, the table covers the free layers, the target is reachable."""
    names = pruners.prunable_parameters(model)
    sizes = {n: int(model.get_parameter(n).numel()) for n in names}
    good = [k for k, v in targets.items() if v is not None and _resolves(model, k)]
    governed = governing_keys(model, good) if good else {}
    fixed = {n: [float(c) for c in candidates(targets[k])] for n, k in governed.items()}
    free = [n for n in names if n not in fixed]
    if not free:
        problems.add(where, "every prunable layer is fixed by the method's targets: nothing is left to allocate "
                     "(an allocation sets only the layers no target names)")  # fmt: skip
        return
    for key in alloc.perturb:
        try:
            hit = expand_keys(names, {key: 0.0})
        except ValueError as err:
            problems.add(join(where, "perturb"), str(err).split("\n", 1)[-1].strip())
            continue
        if not set(hit) - set(fixed):
            log.warning("%s: perturb key %r matches only fixed layers, so it has no effect", where, key)
    if alloc.table_data is not None:
        missing = [n for n in free if n not in alloc.table_data["curves"]]
        if missing:
            problems.add(join(where, "table"), f"{alloc.table} has no rows for {', '.join(missing)}; "
                         "rerun python -m raysweep.sensitivity for this model (or fix those layers)")  # fmt: skip
    total = sum(sizes.values())
    least = sum(min(count_for_ratio(c, sizes[n]) for c in cands) for n, cands in fixed.items())
    most = sum(max(count_for_ratio(c, sizes[n]) for c in cands) for n, cands in fixed.items()) + sum(sizes[n] for n in free)
    for t in candidates(alloc.target) if alloc.target is not None else []:
        need = count_for_ratio(float(t), total)
        if need > most:
            problems.add(join(where, "target"), f"{t} cannot be met: the fixed layers keep at least {total - most} of the "
                         f"{total} prunable weights (at most {most / total:.4f})")  # fmt: skip
        elif need < least:
            problems.add(join(where, "target"), f"{t} cannot be met: the fixed layers alone remove {least} of the "
                         f"{total} prunable weights (at least {least / total:.4f})")  # fmt: skip


def _resolves(model: Any, key: str) -> bool:
    try:
        pruners.resolve_targets(model, {key: 0.0})
    except ValueError:
        return False  # reported by check_targets
    return True


def searched(where: str, alloc: Allocation | None) -> list[tuple[str, Dist]]:
    """(place, distribution) of every searched allocation value (grid checks)."""
    if alloc is None:
        return []
    return [(f"{where}.allocation.{k.replace('/', '.')}", v) for k, v in alloc.params().items() if isinstance(v, Dist)]
