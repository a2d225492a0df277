"""The sweep's dense baseline: the dense training's own last evaluation when the sweep trained
it, an evaluation of the given weights otherwise; kept in sweep.json for every report."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from raysweep import storage
from raysweep.results.collect import load_sweep_info, save_sweep_info
from raysweep.space import DENSE_TRAIN, SearchSpace
from raysweep.trial.baseline import BASELINE_FIGURES, measure_dense

log = logging.getLogger("raysweep.sweep")


def dense_baseline(space: SearchSpace, weights: str, base_cfg: dict[str, Any]) -> dict[str, float]:
    """What the dense model scores, measured as the trials are."""
    summary = storage.join(storage.parent(weights), "summary.json")
    if space.dense == DENSE_TRAIN and storage.is_file(summary):  # the sweep's own dense run
        metrics = json.loads(storage.read_text(summary))
        if all(k in metrics for k in BASELINE_FIGURES):
            return {k: float(metrics[k]) for k in BASELINE_FIGURES}
    import ray

    # One evaluation, before any trial: it holds no CPU, so it never waits behind worker groups
    # that still hold the cluster's (a sweep before this one, or a resumed one's).
    return ray.get(ray.remote(num_cpus=0)(measure_dense).remote({**base_cfg, "weight_file": weights}))


def record_baseline(exp_dir: Path, baseline: dict[str, float], info: Optional[dict[str, Any]] = None) -> None:
    """Into sweep.json (the one just written, or the one a resumed sweep was saved with)."""
    saved = dict(info or load_sweep_info(exp_dir))
    saved["dense"] = baseline
    save_sweep_info(exp_dir, saved)
    log.info("dense baseline: accuracy %.4f, top5 %.4f, %d parameters", baseline["accuracy"], baseline["top5"], baseline["params_total"])
