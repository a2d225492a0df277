"""Pareto fronts, hypervolume and knee points over a DataFrame of trials.

Ray Tune has no multi-objective analysis of its own (``ResultGrid.get_best_result`` is
single-metric), so the front of sparsity vs accuracy is computed here, from the frame
``ResultGrid.get_dataframe()`` (or ``trials.csv``) gives. Pure numpy/pandas.

Objectives are a mapping ``{column: "max" | "min"}`` (or a list of ``(column, mode)``
pairs); the default is :data:`DEFAULT_OBJECTIVES`. Internally every objective is turned
into "larger is better" by negating the "min" columns, so one dominance test serves all.

Hypervolume reference point (default, see :func:`reference_point`): ``0.0`` for "max"
objectives and ``1.0`` for "min" objectives. A fixed default, rather than one derived from
the data (say 1.1 x the worst value), keeps hypervolumes comparable across sweeps; it suits
our objectives, which are fractions (accuracy, sparsity, ``flops_ratio``). For anything
else pass ``reference`` explicitly.
"""
from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Union

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

DEFAULT_OBJECTIVES: Mapping[str, str] = MappingProxyType({"accuracy": "max", "sparsity": "max"})
#: Default reference value per mode (see the module docstring for why it is fixed).
DEFAULT_REFERENCE: Mapping[str, float] = MappingProxyType({"max": 0.0, "min": 1.0})

_MODE_ALIASES = {"max": "max", "maximize": "max", "min": "min", "minimize": "min"}

ObjectivesLike = Union[Mapping[str, str], Iterable[tuple[str, str]], None]
ReferenceLike = Union[Mapping[str, float], Sequence[float], None]

__all__ = [
    "DEFAULT_OBJECTIVES",
    "DEFAULT_REFERENCE",
    "hypervolume",
    "hypervolume_curve",
    "knee_point",
    "normalize_objectives",
    "pareto_front",
    "reference_point",
]


def _check_columns(columns: Iterable[str], df: pd.DataFrame, what: str = "objective") -> None:
    """Raise ValueError for a missing column, naming the nearest existing one."""
    present = [str(c) for c in df.columns]
    for col in columns:
        if col not in df.columns:
            near = difflib.get_close_matches(str(col), present, n=1, cutoff=0.5) or [
                c for c in present if c.lower().startswith(str(col).lower())]
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"{what} column {col!r} is not in the frame{hint}")


def normalize_objectives(objectives: ObjectivesLike = None,
                         df: pd.DataFrame | None = None) -> dict[str, str]:
    """Return objectives as an ordered ``{column: "max"|"min"}``; check columns if df given."""
    if objectives is None:
        items: list = list(DEFAULT_OBJECTIVES.items())
    elif isinstance(objectives, Mapping):
        items = list(objectives.items())
    elif isinstance(objectives, str):
        raise TypeError("objectives must be a mapping {column: mode} or (column, mode) pairs, "
                        f"not the string {objectives!r}")
    else:
        items = list(objectives)
    if not items:
        raise ValueError("at least one objective is needed")
    out: dict[str, str] = {}
    for item in items:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"objective {item!r} is not a (column, mode) pair")
        col, mode = item
        norm = _MODE_ALIASES.get(str(mode).strip().lower())
        if norm is None:
            raise ValueError(f"objective {col!r}: unknown mode {mode!r} (use 'max' or 'min')")
        if col in out:
            raise ValueError(f"objective column {col!r} given twice")
        out[col] = norm
    if df is not None:
        _check_columns(out, df)
    return out


def reference_point(objectives: ObjectivesLike = None,
                    reference: ReferenceLike = None) -> dict[str, float]:
    """Resolve the hypervolume reference point: defaults per mode, overridden by ``reference``.

    ``reference`` is a mapping (may be partial) or a sequence in objective order.
    """
    obj = normalize_objectives(objectives)
    ref = {col: DEFAULT_REFERENCE[mode] for col, mode in obj.items()}
    if reference is None:
        return ref
    if isinstance(reference, Mapping):
        unknown = [k for k in reference if k not in obj]
        if unknown:
            raise ValueError(f"reference names {unknown!r}, which are not objectives {list(obj)}")
        ref.update({k: float(v) for k, v in reference.items()})
    else:
        values = list(reference)
        if len(values) != len(obj):
            raise ValueError(f"reference has {len(values)} values for {len(obj)} objectives")
        ref = {col: float(v) for col, v in zip(obj, values)}
    return ref


def _signs(obj: Mapping[str, str]) -> np.ndarray:
    return np.array([1.0 if mode == "max" else -1.0 for mode in obj.values()])


def _maximised(df: pd.DataFrame, obj: Mapping[str, str]) -> np.ndarray:
    """Objective values as a float (n, k) array in which larger is better everywhere."""
    cols = []
    for col in obj:
        try:
            cols.append(pd.to_numeric(df[col], errors="raise").to_numpy(dtype=float))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"objective column {col!r} is not numeric: {exc}") from exc
    return np.column_stack(cols).reshape(len(df), len(obj)) * _signs(obj)


def _nondominated(X: np.ndarray) -> np.ndarray:
    """Boolean mask of rows of X (no NaN, maximised) that no other row dominates.

    Each surviving row in turn knocks out the rows it dominates (one vectorised pass per
    survivor); trying high-sum rows first removes most rows early. Worst case (everything
    on the front) is O(n^2) in numpy, as a full pairwise test would be, without its memory.
    """
    order = np.argsort(-X.sum(axis=1), kind="stable")
    alive = order                      # original positions still standing
    Y = X[order]
    i = 0
    while i < len(Y):
        p = Y[i]
        dominated = (p >= Y).all(axis=1) & (p > Y).any(axis=1)
        i = int(np.count_nonzero(~dominated[:i])) + 1
        alive, Y = alive[~dominated], Y[~dominated]
    mask = np.zeros(len(X), dtype=bool)
    mask[alive] = True
    return mask


def _front_positions(X: np.ndarray) -> np.ndarray:
    """Positions of non-dominated, NaN-free rows, best first by objective 1, then 2, ..."""
    valid = np.flatnonzero(~np.isnan(X).any(axis=1))
    keep = valid[_nondominated(X[valid])]
    # lexsort: last key is primary; negate so better (larger) comes first; stable for ties.
    order = np.lexsort(tuple(-X[keep, j] for j in reversed(range(X.shape[1]))))
    return keep[order]


def pareto_front(df: pd.DataFrame, objectives: ObjectivesLike = None) -> pd.DataFrame:
    """The non-dominated rows of df (index and all columns kept), best first objective first.

    Rows with NaN in any objective never enter the front; exact duplicates are all kept.
    """
    obj = normalize_objectives(objectives, df)
    X = _maximised(df, obj)
    return df.iloc[_front_positions(X)]


def _hv2d(P: np.ndarray) -> float:
    """Area dominated by positive 2-D points w.r.t. the origin: sort by x desc, sweep y."""
    order = np.lexsort((-P[:, 1], -P[:, 0]))
    x, y = P[order, 0], P[order, 1]
    rises = np.diff(np.maximum.accumulate(y), prepend=0.0)
    return float(np.dot(x, rises))


def _hv(P: np.ndarray) -> float:
    """Exact hypervolume of positive points w.r.t. the origin (HSO slicing for k >= 3)."""
    n, k = P.shape
    if n == 0:
        return 0.0
    if k == 1:
        return float(P[:, 0].max())
    if k == 2:
        return _hv2d(P)
    P = P[np.argsort(-P[:, -1], kind="stable")]
    z = np.append(P[:, -1], 0.0)
    total = 0.0
    for i in range(n):
        depth = z[i] - z[i + 1]
        if depth <= 0:
            continue
        sub = P[:i + 1, :-1]
        if k > 3:  # shrink the recursion; in 3-D the 2-D sweep is cheaper than the filter
            sub = sub[_nondominated(sub)]
        total += _hv(sub) * depth
    return total


def _shifted(df: pd.DataFrame, objectives: ObjectivesLike,
             reference: ReferenceLike) -> tuple[dict[str, str], np.ndarray]:
    """Objectives, and the points as (maximised value - maximised reference); NaN kept."""
    obj = normalize_objectives(objectives, df)
    ref = reference_point(obj, reference)
    r = np.array([ref[c] for c in obj]) * _signs(obj)
    return obj, _maximised(df, obj) - r


def hypervolume(df: pd.DataFrame, objectives: ObjectivesLike = None,
                reference: ReferenceLike = None) -> float:
    """Exact hypervolume dominated by df's points w.r.t. the reference point.

    Points with NaN, or not strictly better than the reference in every objective,
    contribute nothing; an empty frame gives 0.0.
    """
    _, P = _shifted(df, objectives, reference)
    with np.errstate(invalid="ignore"):
        inside = (P > 0).all(axis=1)   # NaN compares False
    return _hv(P[inside])


def knee_point(df: pd.DataFrame, objectives: ObjectivesLike = None) -> pd.Series:
    """The front row nearest the ideal point after min-max normalising each objective.

    Normalisation is over the front, so the units of the objectives don't matter; an
    objective constant over the front counts as ideal. Ties go to the first front row.
    Raises ValueError when no row has all objectives.
    """
    obj = normalize_objectives(objectives, df)
    front = pareto_front(df, obj)
    if front.empty:
        raise ValueError(f"no row has all objectives {list(obj)}: no knee point")
    X = _maximised(front, obj)
    lo, span = X.min(axis=0), np.ptp(X, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(span > 0, (X - lo) / np.where(span > 0, span, 1.0), 1.0)
    distance = np.sqrt(((1.0 - norm) ** 2).sum(axis=1))
    return front.iloc[int(np.argmin(distance))]


def hypervolume_curve(df: pd.DataFrame, objectives: ObjectivesLike = None,
                      reference: ReferenceLike = None,
                      order_by: str | Sequence[str] | None = None) -> pd.DataFrame:
    """Hypervolume of the first n trials for n = 1..len(df): columns n_trials, hypervolume.

    Trials are taken in df order, or sorted (stably, ascending) by ``order_by``. The curve is
    non-decreasing; the front is kept incrementally so only improving trials cost anything.
    """
    if order_by is not None:
        keys = [order_by] if isinstance(order_by, str) else list(order_by)
        _check_columns(keys, df, what="order_by")
        df = df.sort_values(keys, kind="stable")
    obj, P = _shifted(df, objectives, reference)
    front = np.empty((0, len(obj)))
    current = 0.0
    curve = np.zeros(len(df))
    for i, p in enumerate(P):
        if (p > 0).all() and not (front >= p).all(axis=1).any():
            # p's exclusive volume: its box less the part the current front already covers
            limited = np.minimum(front, p)
            covered = _hv(limited[_nondominated(limited)]) if len(front) else 0.0
            current += max(0.0, float(np.prod(p)) - covered)
            front = np.vstack([front[~(p >= front).all(axis=1)], p])
        curve[i] = current
    return pd.DataFrame({"n_trials": np.arange(1, len(df) + 1), "hypervolume": curve})
