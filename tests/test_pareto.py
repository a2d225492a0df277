"""Pareto front, hypervolume, knee point and HV curve on hand-made frames."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from raysweep.results.pareto import (
    DEFAULT_OBJECTIVES,
    hypervolume,
    hypervolume_curve,
    knee_point,
    normalize_objectives,
    pareto_front,
    reference_point,
)


def frame(points, cols=("accuracy", "sparsity"), index=None) -> pd.DataFrame:
    return pd.DataFrame(points, columns=list(cols), index=index)


def brute_force_front(X: np.ndarray) -> set[int]:
    """Positions of rows no other row dominates (all objectives maximised), NaN rows out."""
    keep = set()
    for b in range(len(X)):
        if np.isnan(X[b]).any():
            continue
        dominated = any(
            not np.isnan(X[a]).any() and all(X[a] >= X[b]) and any(X[a] > X[b])
            for a in range(len(X))
        )
        if not dominated:
            keep.add(b)
    return keep


# ---------------------------------------------------------------- objectives
def test_default_objectives():
    assert dict(DEFAULT_OBJECTIVES) == {"accuracy": "max", "sparsity": "max"}
    assert normalize_objectives() == {"accuracy": "max", "sparsity": "max"}


def test_objectives_as_pairs_and_aliases():
    assert normalize_objectives([("flops_ratio", "MIN"), ("accuracy", "maximize")]) == {
        "flops_ratio": "min", "accuracy": "max"}


def test_unknown_mode_rejected():
    with pytest.raises(ValueError, match="best"):
        normalize_objectives({"accuracy": "best"})


def test_missing_column_names_nearest():
    df = frame([(0.9, 0.5)])
    with pytest.raises(ValueError, match=r"'acuracy'.*did you mean 'accuracy'"):
        pareto_front(df, {"acuracy": "max", "sparsity": "max"})


# ---------------------------------------------------------------- front
def test_known_front_exact_index_set_and_order():
    df = frame([(0.90, 0.50), (0.80, 0.70), (0.85, 0.55), (0.70, 0.60), (0.60, 0.90),
                (0.50, 0.85)], index=list("abcdef"))
    front = pareto_front(df)
    assert list(front.index) == ["a", "c", "b", "e"]          # sorted by accuracy, best first
    assert list(front.columns) == ["accuracy", "sparsity"]


def test_tie_in_one_objective_is_dominated():
    df = frame([(0.9, 0.5), (0.9, 0.4), (0.7, 0.8), (0.6, 0.8)])
    assert set(pareto_front(df).index) == {0, 2}


def test_exact_duplicates_all_kept():
    df = frame([(0.9, 0.5), (0.9, 0.5), (0.8, 0.4)])
    assert set(pareto_front(df).index) == {0, 1}


def test_single_point():
    df = frame([(0.5, 0.5)], index=[7])
    assert list(pareto_front(df).index) == [7]


def test_nan_rows_never_on_front():
    df = frame([(0.9, 0.5), (np.nan, 0.99), (0.99, np.nan), (0.5, 0.9)])
    assert set(pareto_front(df).index) == {0, 3}
    assert pareto_front(frame([(np.nan, np.nan)])).empty


def test_min_objective():
    df = pd.DataFrame({"accuracy": [0.9, 0.9, 0.8, 0.7], "flops_ratio": [0.5, 0.4, 0.3, 0.35]})
    front = pareto_front(df, {"accuracy": "max", "flops_ratio": "min"})
    assert set(front.index) == {1, 2}
    front = pareto_front(df, [("flops_ratio", "min"), ("accuracy", "max")])
    assert list(front.index) == [2, 1]                         # flops ascending = best first


def test_three_objectives():
    df = pd.DataFrame({"a": [1, 0, 0, 0.5, 0.4], "b": [0, 1, 0, 0.5, 0.4],
                       "c": [0, 0, 1, 0.5, 0.4]})
    objectives = {"a": "max", "b": "max", "c": "max"}
    assert set(pareto_front(df, objectives).index) == {0, 1, 2, 3}


def test_random_frame_matches_brute_force():
    rng = np.random.default_rng(0)
    for k in (2, 3):
        X = rng.integers(0, 12, size=(150, k)).astype(float)  # integers: many ties
        X[rng.random(150) < 0.05, 0] = np.nan
        cols = [f"o{j}" for j in range(k)]
        df = pd.DataFrame(X, columns=cols)
        modes = ["max", "min", "max"][:k]
        expected = brute_force_front(X * np.array([1 if m == "max" else -1 for m in modes]))
        got = pareto_front(df, dict(zip(cols, modes)))
        assert set(got.index) == expected


def test_extra_columns_kept():
    df = pd.DataFrame({"trial_id": ["x", "y"], "accuracy": [0.9, 0.8],
                       "sparsity": [0.5, 0.4], "method": ["nm", "filter"]})
    front = pareto_front(df)
    assert list(front.columns) == list(df.columns)
    assert front["trial_id"].tolist() == ["x"]


# ---------------------------------------------------------------- hypervolume
def test_hypervolume_2d_hand_computed():
    df = frame([(0.9, 0.5), (0.8, 0.7)])
    assert hypervolume(df) == pytest.approx(0.9 * 0.5 + 0.8 * (0.7 - 0.5))


def test_hypervolume_with_reference_and_min():
    df = pd.DataFrame({"accuracy": [0.9, 0.8], "flops_ratio": [0.5, 0.3]})
    objectives = {"accuracy": "max", "flops_ratio": "min"}
    # default reference: accuracy 0, flops_ratio 1 -> boxes 0.9x0.5 and 0.8x0.7
    assert hypervolume(df, objectives) == pytest.approx(0.9 * 0.5 + 0.8 * (0.7 - 0.5))
    ref = {"accuracy": 0.5, "flops_ratio": 0.6}
    assert hypervolume(df, objectives, ref) == pytest.approx(0.4 * 0.1 + 0.3 * 0.2)
    assert hypervolume(df, objectives, [0.5, 0.6]) == pytest.approx(0.1)


def test_points_not_better_than_reference_contribute_nothing():
    df = frame([(0.9, 0.5), (0.95, 0.0), (0.2, -0.1)])
    assert hypervolume(df) == pytest.approx(0.45)
    assert hypervolume(df, reference={"accuracy": 0.95}) == 0.0


def test_hypervolume_3d_unit_boxes():
    cols = ("a", "b", "c")
    objectives = dict.fromkeys(cols, "max")
    assert hypervolume(frame([(1, 1, 1)], cols), objectives) == pytest.approx(1.0)
    # two unit-ish boxes overlapping in [0,1]^2 x [0,1]: 1*1*2 + 2*1*1 - 1*1*1 = 3
    two = frame([(1, 1, 2), (2, 1, 1)], cols)
    assert hypervolume(two, objectives) == pytest.approx(3.0)
    # the three axis boxes of size 2x1x1: inclusion-exclusion 3*2 - 3*1 + 1 = 4
    three = frame([(2, 1, 1), (1, 2, 1), (1, 1, 2)], cols)
    assert hypervolume(three, objectives) == pytest.approx(4.0)


def test_hypervolume_3d_matches_grid_count():
    """Integer points: count unit cells dominated by some point (independent of HSO)."""
    rng = np.random.default_rng(1)
    P = rng.integers(1, 6, size=(12, 3))
    cells = sum(
        any((P >= np.array(cell) + 1).all(axis=1))
        for cell in itertools.product(range(5), repeat=3)
    )
    df = frame(P.astype(float), ("a", "b", "c"))
    assert hypervolume(df, dict.fromkeys("abc", "max")) == pytest.approx(cells)


def test_hypervolume_4d_box():
    df = frame([(1, 2, 3, 4), (0.5, 0.5, 0.5, 0.5)], "abcd")
    assert hypervolume(df, dict.fromkeys("abcd", "max")) == pytest.approx(24.0)


def test_hypervolume_monotone_in_added_points():
    rng = np.random.default_rng(2)
    df = frame(rng.random((40, 2)))
    values = [hypervolume(df.iloc[:n]) for n in range(len(df) + 1)]
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))


def test_hypervolume_invariant_to_dominated_points_and_duplicates():
    df = frame([(0.9, 0.5), (0.8, 0.7)])
    more = frame([(0.9, 0.5), (0.8, 0.7), (0.5, 0.5), (0.8, 0.5), (0.9, 0.5), (np.nan, 1.0)])
    assert hypervolume(more) == pytest.approx(hypervolume(df))


def test_hypervolume_empty():
    assert hypervolume(frame([])) == 0.0
    assert hypervolume(frame([(np.nan, 0.5)])) == 0.0


def test_reference_point_defaults_and_errors():
    assert reference_point({"accuracy": "max", "flops_ratio": "min"}) == {
        "accuracy": 0.0, "flops_ratio": 1.0}
    with pytest.raises(ValueError, match="top5"):
        reference_point(None, {"top5": 0.1})
    with pytest.raises(ValueError):
        reference_point(None, [0.1])


# ---------------------------------------------------------------- knee, curve
def test_knee_point_is_best_trade_off():
    df = frame([(0.95, 0.1), (0.9, 0.8), (0.5, 0.95), (0.4, 0.5)], index=list("abcd"))
    knee = knee_point(df)
    assert isinstance(knee, pd.Series)
    assert knee.name == "b"
    assert knee["accuracy"] == 0.9


def test_knee_point_empty_raises():
    with pytest.raises(ValueError):
        knee_point(frame([(np.nan, 0.5)]))


def test_hypervolume_curve():
    df = pd.DataFrame({"accuracy": [0.8, 0.9, 0.5, np.nan, 0.8],
                       "sparsity": [0.7, 0.5, 0.5, 0.9, 0.7], "t": [5, 1, 2, 3, 4]})
    curve = hypervolume_curve(df)
    assert list(curve.columns) == ["n_trials", "hypervolume"]
    assert curve["n_trials"].tolist() == [1, 2, 3, 4, 5]
    assert curve["hypervolume"].tolist() == pytest.approx([0.56, 0.61, 0.61, 0.61, 0.61])
    ordered = hypervolume_curve(df, order_by="t")
    assert ordered["hypervolume"].tolist() == pytest.approx([0.45, 0.45, 0.45, 0.61, 0.61])


def test_hypervolume_curve_monotone_and_ends_at_total():
    rng = np.random.default_rng(3)
    df = frame(rng.random((60, 3)), "abc")
    objectives = dict.fromkeys("abc", "max")
    curve = hypervolume_curve(df, objectives)["hypervolume"].to_numpy()
    assert (np.diff(curve) >= -1e-12).all()
    assert curve[-1] == pytest.approx(hypervolume(df, objectives))
    assert curve[9] == pytest.approx(hypervolume(df.iloc[:10], objectives))


def test_hypervolume_curve_bad_order_by():
    with pytest.raises(ValueError, match="order_by"):
        hypervolume_curve(frame([(0.5, 0.5)]), order_by="wal_s")
