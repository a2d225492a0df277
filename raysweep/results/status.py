"""Which trials count: finished ones enter fronts, failed ones are listed with their error."""
from __future__ import annotations

import pandas as pd

FINISHED_STATUSES = frozenset({"TERMINATED"})

FAILED_STATUSES = frozenset({"ERROR"})



def _status(trials: pd.DataFrame) -> pd.Series:
    return trials["status"].astype("string").str.strip().str.upper()



def finished_mask(trials: pd.DataFrame) -> pd.Series:
    """True for trials that may enter a front (TERMINATED; all if there is no status)."""
    if "status" not in trials.columns:
        return pd.Series(True, index=trials.index)
    return _status(trials).isin(FINISHED_STATUSES).fillna(False).astype(bool)



def failed_mask(trials: pd.DataFrame) -> pd.Series:
    """True for ERROR trials, and for unfinished ones that carry an error message."""
    failed = pd.Series(False, index=trials.index)
    if "status" in trials.columns:
        failed |= _status(trials).isin(FAILED_STATUSES).fillna(False).astype(bool)
    if "error" in trials.columns:
        has_error = trials["error"].fillna("").astype(str).str.strip() != ""
        failed |= has_error & ~finished_mask(trials)
    return failed



def method_groups(trials: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    if "method" not in trials.columns:
        return []
    names = trials["method"].astype("string").fillna("(none)")
    return [(str(m), trials[names == m]) for m in sorted(names.unique())]

