"""raysweep: Ray Tune over per-layer prune ratios, methods and schedules; Ray Train per trial.

Importing the package stays cheap (no Ray import); the heavy pieces load on first use.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "run": "raysweep.api",
    "load_sweep": "raysweep.api",
    "Sweep": "raysweep.api",
    "pareto_front": "raysweep.results.pareto",
    "hypervolume": "raysweep.results.pareto",
    "knee_point": "raysweep.results.pareto",
    "hypervolume_curve": "raysweep.results.pareto",
    "write_reports": "raysweep.results.reports",
    "create_model": "raysweep.models",
    "list_models": "raysweep.models",
    "build_datasets": "raysweep.data",
}

__all__ = list(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'raysweep' has no attribute {name!r}")
