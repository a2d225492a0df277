"""From a Ray Tune experiment folder to ``trials.csv`` and the Pareto reports.

Works on finished and interrupted experiments alike (``python -m raysweep.report`` uses it):
every trial Ray Tune knows appears exactly once, failed ones with their error.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from raysweep.results.reports import write_reports
from raysweep.trial.checkpoint import CheckpointFolder

log = logging.getLogger("raysweep.results")

SWEEP_FILE = "sweep.json"  # what the report needs to know about the sweep (objectives, space)

# Metric name in the trial's reports -> trials.csv column.
_METRIC_COLUMNS = {
    "method": "method", "schedule": "schedule", "accuracy": "accuracy", "top5": "top5",
    "best_accuracy": "best_accuracy", "sparsity": "sparsity", "sparsity_conv": "sparsity_conv",
    "sparsity_seed": "sparsity_seed", "flops_ratio": "flops_ratio", "params_remaining": "params_remaining",
    "train_s": "train_s", "time_total_s": "wall_s", "node_id": "node_id",
    "allocation": "allocation", "global_target": "global_target",
    "latency_ms_b1": "latency_ms_b1", "latency_ms_b64": "latency_ms_b64", "speedup": "speedup",
    "nm_permute_gain": "nm_permute_gain",
    # Distillation from the dense model (0: off) and the precision the trial trained in.
    "distill_alpha": "distill_alpha", "distill_temperature": "distill_temperature", "precision": "precision",
    # Unix time (s) of the trial's last report, its end once finished: orders trials in time.
    "timestamp": "finished_at",
}


def save_sweep_info(exp_dir: Path, info: dict[str, Any]) -> None:
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / SWEEP_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")


def load_sweep_info(exp_dir: Path) -> dict[str, Any]:
    path = exp_dir / SWEEP_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _last_checkpoint(exp_dir: Path, trial_id: str) -> str:
    """Every trial keeps its checkpoints under ``trials/<id>/`` (raysweep.trial.checkpoint)."""
    newest = CheckpointFolder(exp_dir / "trials" / trial_id).newest_path()
    return str(newest) if newest else ""


def _error_text(trial) -> str:
    # The copy in the experiment folder: Trial.error_file points into the driver's Ray session
    # (it needs a running Ray, and is gone once that session ends).
    name = trial.run_metadata.error_filename
    path = Path(trial.path, name) if name and trial.path else None
    if path and path.is_file():
        lines = [ln for ln in Path(path).read_text(errors="replace").strip().splitlines() if ln.strip()]
        return lines[-1][:500] if lines else "failed"
    return ""


def trials_frame(exp_dir: Path) -> pd.DataFrame:
    """One row per trial: id, status, error, method, schedule, ratio/<param>, figures, checkpoint."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(exp_dir))
    rows = []
    for trial in analysis.trials:
        last = trial.last_result or {}
        row: dict[str, Any] = {"trial_id": trial.trial_id, "status": trial.status, "error": _error_text(trial)}
        config = trial.config or {}
        row["method"] = last.get("method", config.get("method"))
        row["schedule"] = last.get("schedule", config.get("schedule"))
        row["point"] = config.get("point", -1)
        for key, column in _METRIC_COLUMNS.items():
            if key in last:
                row[column] = last[key]
        row.update({k: v for k, v in last.items() if k.startswith("ratio/")})
        row["epochs"] = last["epoch"] + 1 if "epoch" in last else 0
        row["checkpoint"] = _last_checkpoint(exp_dir, trial.trial_id)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if len(frame):
        ratio_cols = sorted(c for c in frame.columns if c.startswith("ratio/"))
        front = ["trial_id", "status", "error", "method", "schedule", "point"]
        rest = [c for c in frame.columns if c not in front and c not in ratio_cols]
        frame = frame[front + ratio_cols + rest].sort_values("trial_id", kind="stable").reset_index(drop=True)
    return frame


def build_reports(exp_dir: Path, objectives: Optional[dict[str, str]] = None, title: Optional[str] = None) -> dict[str, Path]:
    """Write trials.csv, pareto.csv, report.md/html and pareto.png into the experiment folder."""
    info = load_sweep_info(exp_dir)
    objectives = objectives or info.get("objectives")
    frame = trials_frame(exp_dir)
    return write_reports(frame, exp_dir, objectives=objectives, title=title or f"raysweep: {info.get('name', exp_dir.name)}")
