"""Allocation families: one global sparsity target -> a ratio per layer.

A search over a 16-dimensional box of per-layer ratios wastes most of its trials on shapes
no one would choose. An allocation family turns *one* number, the global target (the
fraction of all prunable weights removed), into per-layer ratios along a sensible shape:

``uniform``           every free layer gets the same ratio.
``erk``               Erdős–Rényi-Kernel (Evci et al. 2020, RigL): a layer's density is
                      proportional to sum(shape) / prod(shape), scaled to meet the target;
                      a layer whose density would exceed 1 is made dense and the others are
                      rescaled (RigL's loop, ``erk_power_scale`` 1).
``global_magnitude``  one |w| threshold across all free layers (needs the weights).
``lamp``              LAMP (Lee et al. 2021): per layer, score(u) = w_u^2 / sum of w_v^2 over
                      the weights at least as large (sorted order, ties by index); one global
                      threshold on the scores (needs the weights).
``sensitivity``       from a ``raysweep.sensitivity`` table: for a common tolerance t, each
                      layer takes the largest ratio whose one-shot accuracy drop stays <= t
                      (drops linearly interpolated between the measured ratios, made
                      monotone by a running max, ratio 0 drops 0, and ratio 1 drops the dense
                      accuracy unless measured); t is bisected until the target is met, and
                      the last step is blended between the two bracketing allocations.

The rules every family shares:

* The target counts weights: ``count_for_ratio(target, N)`` of the N prunable weights go.
  *Fixed* layers (the space names them, e.g. ``features.0.weight: 0.0``) keep their ratio and
  the *free* layers absorb the rest; an unreachable target is clipped (with a warning).
* Per-layer real-valued removals are rounded to whole weights by largest remainder, so the
  removed counts add up to the global count exactly, and each ratio is ``k / numel``:
  ``irregular`` then removes exactly that many weights per layer.
* ``perturb`` ({name or glob: offset}, exact names winning, later globs winning) moves chosen
  layers off the family's shape before rounding. ``mode: add``: ratio + offset, then one
  common shift added to every free ratio (clipped to [0, 1]) restores the target.
  ``mode: mul``: ratio * (1 + offset), then every free ratio is scaled by one common factor
  (clipped at 1); layers at 0 stay dense. Either way the global count is met again.
* For ``filter`` and ``stripe`` the same ratios are used as structured ratios (a ratio of the
  layer's filters / stripes), so the global count holds up to each layer's group rounding.
  ``pattern`` and ``nm`` have no free ratio per layer: allocation is refused for them.

Nothing here imports Ray. ``resolve_allocation`` is what a training worker calls, with the
dense weights loaded and before ``pruners.prepare``.
"""
from __future__ import annotations

import csv
import difflib
import fnmatch
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from pruners.registry import get_method
from pruners.ratio_config import prunable_modules, resolve_targets, strip_module_prefix
from pruners.selection import count_for_ratio, keep_mask_lowest_removed

__all__ = [
    "ALLOCATION_METHODS", "FAMILIES", "PERTURB_MODES", "Family", "SensitivityTable", "allocate",
    "check_method", "expand_keys", "get_family", "list_families", "register_family", "resolve_allocation",
]  # fmt: skip

log = logging.getLogger(__name__)

ALLOCATION_METHODS = ("irregular", "filter", "stripe", "channel")  # methods whose per-layer target is a free ratio
PERTURB_MODES = ("add", "mul")
_BISECT_STEPS = 200

# (free layer name -> weight (a meta tensor is enough for shape-only families), weights to
#  remove among them, sensitivity table or None) -> ratio per free layer, sum(ratio*numel) == removed
FamilyFn = Callable[[Mapping[str, torch.Tensor], float, Optional["SensitivityTable"]], dict[str, float]]


@dataclass(frozen=True)
class Family:
    name: str
    fn: FamilyFn
    needs_weights: bool  # reads weight values, so it can only run where the dense weights are
    needs_table: bool  # reads a sensitivity table
    doc: str = ""


FAMILIES: dict[str, Family] = {}


def register_family(name: str, *, needs_weights: bool = False, needs_table: bool = False) -> Callable[[FamilyFn], FamilyFn]:
    """Decorator: register an allocation family under ``name``."""

    def decorator(fn: FamilyFn) -> FamilyFn:
        FAMILIES[name] = Family(name, fn, needs_weights, needs_table, (fn.__doc__ or "").strip())
        return fn

    return decorator


def list_families() -> list[str]:
    return list(FAMILIES)


def get_family(name: object) -> Family:
    """The family called ``name``; an unknown name is a ValueError naming the nearest one."""
    if isinstance(name, str) and name.strip().lower() in FAMILIES:
        return FAMILIES[name.strip().lower()]
    close = difflib.get_close_matches(str(name), list(FAMILIES), n=1, cutoff=0.0)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown allocation family {name!r}{hint} (known: {', '.join(FAMILIES)})")


def check_method(method: str) -> str:
    """The canonical method name if allocation applies to it, else a ValueError saying why not."""
    name = get_method(method).name
    if name not in ALLOCATION_METHODS:
        raise ValueError(
            f"allocation families set a ratio per layer; method {name!r} has no free per-layer ratio "
            f"(allocation works with {', '.join(ALLOCATION_METHODS)}): give {name}'s targets per layer"
        )
    return name


# ------------------------------------------------------------------------- sensitivity tables
@dataclass(frozen=True)
class SensitivityTable:
    """Per-layer accuracy drop of one-shot pruning at a ladder of ratios (``raysweep.sensitivity``)."""

    dense_accuracy: float
    curves: dict[str, tuple[tuple[float, float], ...]]  # layer -> ((ratio, accuracy drop), ...) by ratio

    COLUMNS = ("layer", "ratio", "accuracy_drop", "dense_accuracy")

    @classmethod
    def read(cls, path: str | os.PathLike) -> SensitivityTable:
        """Read ``sensitivity.csv``; a missing file, column or bad number is one ValueError."""
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        except OSError as err:
            raise ValueError(f"cannot read sensitivity table {path}: {err.strerror or err}") from None
        missing = [c for c in cls.COLUMNS if not rows or c not in rows[0]]
        if missing:
            raise ValueError(f"sensitivity table {path} has no rows or lacks column(s) {', '.join(missing)} (write it with python -m raysweep.sensitivity)")
        try:
            data = [(strip_module_prefix(r["layer"].strip()), float(r["ratio"]), float(r["accuracy_drop"])) for r in rows]
            dense = float(rows[0]["dense_accuracy"])
        except ValueError as err:
            raise ValueError(f"sensitivity table {path}: {err}") from None
        curves: dict[str, list[tuple[float, float]]] = {}
        for layer, ratio, drop in data:
            if not 0.0 <= ratio <= 1.0 or not math.isfinite(drop):
                raise ValueError(f"sensitivity table {path}: {layer} has ratio {ratio} / drop {drop}; ratios lie in [0, 1]")
            curves.setdefault(layer, []).append((ratio, drop))
        return cls(dense, {k: tuple(sorted(v)) for k, v in curves.items()})

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON, Ray configs): a trial carries its table inline, needing no file."""
        return {"dense_accuracy": self.dense_accuracy, "curves": {k: [list(p) for p in v] for k, v in self.curves.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SensitivityTable:
        curves = {k: tuple(sorted((float(r), float(d)) for r, d in v)) for k, v in data["curves"].items()}
        return cls(float(data["dense_accuracy"]), curves)

    def envelope(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """(ratios, monotone drops) from ratio 0 (drop 0) to ratio 1 (the dense accuracy unless measured)."""
        points = dict(self.curves[layer])
        points.setdefault(0.0, 0.0)
        last = max(points.values())
        points.setdefault(1.0, max(last, self.dense_accuracy))
        ratios = np.array(sorted(points))
        drops = np.maximum.accumulate(np.maximum([points[r] for r in ratios], 0.0))
        return ratios, drops


def _ratio_within(ratios: np.ndarray, drops: np.ndarray, tolerance: float) -> float:
    """The largest ratio whose (piecewise-linear, monotone) drop is <= tolerance."""
    if tolerance < drops[0]:
        return 0.0
    if tolerance >= drops[-1]:
        return float(ratios[-1])
    j = int(np.searchsorted(drops, tolerance, side="right")) - 1  # drops[j] <= tol < drops[j + 1]
    share = (tolerance - drops[j]) / (drops[j + 1] - drops[j])
    return float(ratios[j] + share * (ratios[j + 1] - ratios[j]))


# ------------------------------------------------------------------------- the families
def _numel(w: torch.Tensor) -> int:
    return int(math.prod(w.shape))


def _needs_values(name: str, weights: Mapping[str, torch.Tensor]) -> None:
    if any(w.is_meta for w in weights.values()):
        raise ValueError(f"allocation family {name!r} ranks weight values: give it the model with its dense weights loaded")


def _counts_of_lowest(scores: list[torch.Tensor], removed: float) -> list[int]:
    """Per-tensor counts of the ``removed`` lowest scores across all tensors (ties: earlier first)."""
    flat = torch.cat([s.reshape(-1) for s in scores])
    gone = ~keep_mask_lowest_removed(flat, round(removed))
    return [int(part.sum()) for part in torch.split(gone, [s.numel() for s in scores])]


@register_family("uniform")
def uniform(weights: Mapping[str, torch.Tensor], removed: float, table: SensitivityTable | None) -> dict[str, float]:
    """The same ratio for every free layer."""
    ratio = removed / sum(_numel(w) for w in weights.values())
    return dict.fromkeys(weights, ratio)


@register_family("erk")
def erk(weights: Mapping[str, torch.Tensor], removed: float, table: SensitivityTable | None) -> dict[str, float]:
    """Erdős–Rényi-Kernel: density ∝ sum(shape)/prod(shape); layers that would pass density 1 go dense."""
    sizes = {n: _numel(w) for n, w in weights.items()}
    raw = {n: sum(w.shape) / sizes[n] for n, w in weights.items()}
    kept = sum(sizes.values()) - removed
    dense: set[str] = set()
    while True:
        rest = [n for n in weights if n not in dense]
        if not rest:
            return dict.fromkeys(weights, 0.0)
        eps = (kept - sum(sizes[n] for n in dense)) / sum(raw[n] * sizes[n] for n in rest)
        top = max(raw[n] for n in rest)
        if eps * top <= 1.0:
            break
        dense.update(n for n in rest if raw[n] == top)  # RigL: every layer at the maximum, then retry
    return {n: 0.0 if n in dense else 1.0 - eps * raw[n] for n in weights}


@register_family("global_magnitude", needs_weights=True)
def global_magnitude(weights: Mapping[str, torch.Tensor], removed: float, table: SensitivityTable | None) -> dict[str, float]:
    """One |w| threshold across the free layers: the ``removed`` smallest magnitudes go."""
    _needs_values("global_magnitude", weights)
    scores = [w.detach().abs().to(torch.float64).cpu() for w in weights.values()]
    counts = _counts_of_lowest(scores, removed)
    return {n: k / _numel(w) for (n, w), k in zip(weights.items(), counts)}


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP score of every weight (same shape): w_u^2 / sum of w_v^2 for v at or after u in ascending |w| order."""
    sq = weight.detach().to(torch.float64).cpu().reshape(-1) ** 2
    vals, order = torch.sort(sq, stable=True)
    tail = vals.flip(0).cumsum(0).flip(0)
    sorted_scores = torch.where(tail > 0, vals / tail.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(vals))
    return torch.empty_like(sq).scatter_(0, order, sorted_scores).reshape(weight.shape)


@register_family("lamp", needs_weights=True)
def lamp(weights: Mapping[str, torch.Tensor], removed: float, table: SensitivityTable | None) -> dict[str, float]:
    """LAMP (Lee et al. 2021): one global threshold on layer-adaptive magnitude scores."""
    _needs_values("lamp", weights)
    counts = _counts_of_lowest([lamp_scores(w) for w in weights.values()], removed)
    return {n: k / _numel(w) for (n, w), k in zip(weights.items(), counts)}


@register_family("sensitivity", needs_table=True)
def sensitivity(weights: Mapping[str, torch.Tensor], removed: float, table: SensitivityTable | None) -> dict[str, float]:
    """Less sensitive layers prune more: one accuracy-drop tolerance for all, bisected to the target."""
    if table is None:
        raise ValueError("allocation family 'sensitivity' needs a sensitivity table (allocation.table)")
    missing = [n for n in weights if n not in table.curves]
    if missing:
        raise ValueError(f"the sensitivity table has no rows for {', '.join(missing)}; rerun python -m raysweep.sensitivity for this model")
    names = list(weights)
    sizes = np.array([_numel(weights[n]) for n in names], dtype=np.float64)
    curves = [table.envelope(n) for n in names]

    def at(tol: float) -> np.ndarray:
        return np.array([_ratio_within(r, d, tol) for r, d in curves])

    lo, hi = -1.0, max(float(d[-1]) for _, d in curves)
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sizes @ at(mid) < removed else (lo, mid)
    r_lo, r_hi = at(lo), at(hi)
    t_lo, t_hi = sizes @ r_lo, sizes @ r_hi
    share = 1.0 if t_hi <= t_lo else min(max((removed - t_lo) / (t_hi - t_lo), 0.0), 1.0)
    return dict(zip(names, (r_lo + share * (r_hi - r_lo)).tolist()))


# ------------------------------------------------------------------------- shared steps
def expand_keys(names: list[str], values: Mapping[str, Any]) -> dict[str, Any]:
    """{name or glob: value} -> {name: value}: exact names win, later globs win; a key matching nothing is a ValueError."""
    exact: dict[str, Any] = {}
    globbed: dict[str, Any] = {}
    bad = []
    for raw, value in values.items():
        key = strip_module_prefix(str(raw).strip())
        if any(c in key for c in "*?["):
            matched = fnmatch.filter(names, key)
            globbed.update(dict.fromkeys(matched, value))
        else:
            matched = [key] if key in names else []
            exact.update(dict.fromkeys(matched, value))
        if not matched:
            close = difflib.get_close_matches(key, names, n=3, cutoff=0.0)
            bad.append(f"{key!r} matches no prunable parameter; closest: {', '.join(close)}")
    if bad:
        raise ValueError("invalid perturb keys:\n  " + "\n  ".join(bad))
    merged = {**globbed, **exact}
    return {n: merged[n] for n in names if n in merged}


def _bisect(total: Callable[[float], float], goal: float, lo: float, hi: float) -> float:
    """x in [lo, hi] with total(x) == goal for a continuous non-decreasing total."""
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) < goal else (lo, mid)
    return hi


def _renormalise(ratios: np.ndarray, sizes: np.ndarray, removed: float, mode: str) -> np.ndarray:
    """One common shift (add) or scale (mul) of the free ratios, clipped to [0, 1], meets ``removed``."""
    positive = ratios > 0
    if mode == "mul" and positive.any() and removed <= sizes[positive].sum():
        lam = _bisect(lambda s: sizes @ np.minimum(ratios * s, 1.0), removed, 0.0, 1.0 / ratios[positive].min())
        return np.minimum(ratios * lam, 1.0)
    c = _bisect(lambda s: sizes @ np.clip(ratios + s, 0.0, 1.0), removed, -1.0 - ratios.max(), 1.0 - ratios.min())
    return np.clip(ratios + c, 0.0, 1.0)


def _integerise(ratios: np.ndarray, sizes: np.ndarray, removed: int) -> np.ndarray:
    """Whole weights per layer, summing to ``removed`` exactly (largest remainder, ties by order)."""
    real = np.clip(ratios, 0.0, 1.0) * sizes
    counts = np.floor(real + 1e-9).astype(np.int64)
    counts = np.minimum(counts, sizes.astype(np.int64))
    left = real - counts
    while counts.sum() != removed:
        short = removed - int(counts.sum())
        step = 1 if short > 0 else -1
        room = counts < sizes if step > 0 else counts > 0
        order = [i for i in np.argsort(-left if step > 0 else left, kind="stable") if room[i]]
        for i in order[: abs(short)]:
            counts[i] += step
            left[i] -= step
    return counts


def allocate(
    family: str,
    weights: Mapping[str, torch.Tensor],
    target: float,
    *,
    fixed: Mapping[str, float] | None = None,
    perturb: Mapping[str, float] | None = None,
    mode: str = "add",
    table: SensitivityTable | None = None,
) -> dict[str, float]:
    """Per-layer ratios (every key of ``weights``, in order) removing ``count_for_ratio(target, N)`` weights.

    ``weights``: prunable name -> weight (meta tensors do for uniform/erk/sensitivity);
    ``fixed``: name -> ratio kept as given; ``perturb``: {name or glob: offset} (see the module doc).
    """
    fam = get_family(family)
    if mode not in PERTURB_MODES:
        raise ValueError(f"perturb mode {mode!r} is not one of {', '.join(PERTURB_MODES)}")
    if not 0.0 <= float(target) <= 1.0:
        raise ValueError(f"global target {target!r} is outside [0, 1]")
    names = list(weights)
    fixed = {strip_module_prefix(k): float(v) for k, v in (fixed or {}).items()}
    unknown = sorted(set(fixed) - set(names))
    if unknown:
        raise ValueError(f"fixed layers {', '.join(unknown)} are not among the prunable parameters")
    sizes = {n: _numel(w) for n, w in weights.items()}
    free = [n for n in names if n not in fixed]
    goal = count_for_ratio(float(target), sum(sizes.values())) - sum(count_for_ratio(r, sizes[n]) for n, r in fixed.items())
    room = sum(sizes[n] for n in free)
    removed = min(max(goal, 0), room)
    if removed != goal:
        log.warning("global target %.4f is out of reach with the fixed layers; the free layers take %d of their %d weights", target, removed, room)
    if not free:
        return {n: fixed[n] for n in names}
    free_weights = {n: weights[n] for n in free}
    raw = fam.fn(free_weights, float(removed), table)
    ratios = np.array([raw[n] for n in free], dtype=np.float64)
    sizes_free = np.array([sizes[n] for n in free], dtype=np.float64)
    offsets = expand_keys(names, perturb or {})
    if offsets:
        delta = np.array([float(offsets.get(n, 0.0)) for n in free])
        moved = ratios + delta if mode == "add" else ratios * (1.0 + delta)
        ratios = _renormalise(np.clip(moved, 0.0, 1.0), sizes_free, removed, mode)
    counts = _integerise(ratios, sizes_free, removed)
    out = dict(zip(free, (int(k) / sizes[n] for n, k in zip(free, counts))))
    return {n: fixed[n] if n in fixed else out[n] for n in names}


def resolve_allocation(model: nn.Module, method: str, targets: Mapping[str, object], spec: Mapping[str, Any]) -> dict[str, float]:
    """A trial's per-parameter ratios: ``targets`` are its fixed layers (names or globs), ``spec``
    its allocation (``family``, ``target``, optional ``perturb``, ``mode``, ``table`` as
    ``SensitivityTable.to_dict()``). Call with the dense weights loaded, before ``prepare``."""
    check_method(method)
    fixed = resolve_targets(model, targets) if targets else {}
    weights = {n: m.weight for n, m in prunable_modules(model).items()}
    table = SensitivityTable.from_dict(spec["table"]) if spec.get("table") else None
    return allocate(
        spec["family"], weights, float(spec["target"]), fixed={k: float(v) for k, v in fixed.items()},
        perturb=spec.get("perturb") or {}, mode=spec.get("mode", "add"), table=table,
    )  # fmt: skip
