"""Shared by several test modules (importable because pytest puts tests/ on sys.path)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

# The digits sweeps of the tests: two methods whose per-layer targets are searched, one-epoch
# trials. Each test module sets what it is about (trials, seed, epochs, points, objectives...).
TINY_SPACE: dict[str, Any] = {
    "model": "digits_cnn",
    "dataset": "digits",
    "search": "random",
    "seed": 0,
    "epochs": 1,
    "lr": 0.01,
    "batch_size": 128,
    "methods": {
        "irregular": {"*": {"uniform": [0.3, 0.9]}, "classifier.2.weight": 0.5},
        "nm": {"*": {"choice": ["m4n2", "m8n2"]}, "features.0.weight": 0.0},
    },
    "schedules": {"oneshot": {}},
}


def tiny_space(name: str, **fields: Any) -> dict[str, Any]:
    """A tiny digits space named ``name``, with ``fields`` replacing the defaults above."""
    return {**copy.deepcopy(TINY_SPACE), "name": name, **fields}


def write_space(folder: Path, space: dict[str, Any]) -> Path:
    """``space`` as ``<folder>/<name>.yaml``; returns the file."""
    path = Path(folder) / f"{space['name']}.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def run_local(cfg: Any, session: Any = None) -> Any:
    """The training loop on ``cfg`` (a RunConfig) in this process, no Ray; returns the session
    (a ``LocalSession`` unless given), which holds every report and the last checkpoint. The loop
    sets torch's thread count for itself: the caller's is restored."""
    import torch

    from raysweep.trial.loop import run_loop
    from raysweep.trial.sessions import LocalSession

    session = LocalSession() if session is None else session
    threads = torch.get_num_threads()
    try:
        run_loop({"run": cfg.to_dict(), "run_dir": ""}, session)
    finally:
        torch.set_num_threads(threads)
    return session
