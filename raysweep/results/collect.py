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

from raysweep import storage
from raysweep.results.pareto import DEFAULT_OBJECTIVES
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


# Every ``exp_dir`` below is a folder or a storage URI (raysweep.storage): s3://bucket/prefix/<name>.
def save_sweep_info(exp_dir: storage.Location, info: dict[str, Any]) -> None:
    storage.makedirs(exp_dir)
    storage.write_text(storage.join(exp_dir, SWEEP_FILE), json.dumps(info, indent=2, default=str) + "\n")


def load_sweep_info(exp_dir: storage.Location) -> dict[str, Any]:
    path = storage.join(exp_dir, SWEEP_FILE)
    return json.loads(storage.read_text(path)) if storage.is_file(path) else {}


def _last_checkpoint(exp_dir: storage.Location, trial_id: str) -> str:
    """Every trial keeps its checkpoints under ``trials/<id>/`` (raysweep.trial.checkpoint)."""
    newest = CheckpointFolder(storage.join(exp_dir, "trials", trial_id)).newest_path()
    return str(newest) if newest else ""


def _error_text(trial) -> str:
    # The copy in the experiment folder: Trial.error_file points into the driver's Ray session
    # (it needs a running Ray, and is gone once that session ends).
    name = trial.run_metadata.error_filename
    fs = getattr(getattr(trial, "storage", None), "storage_filesystem", None)
    if name and trial.path and fs is not None and fs.type_name != "local":  # an object store's copy
        try:
            with fs.open_input_stream(f"{trial.path}/{name}") as f:
                return _last_line(f.read().decode(errors="replace"))
        except OSError:
            return ""
    path = Path(trial.path, name) if name and trial.path else None
    if path and path.is_file():
        return _last_line(Path(path).read_text(errors="replace"))
    return ""


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else "failed"


# RunConfig fields that are not a trial's recipe: what is trained, where it runs, where it writes.
NOT_RECIPE = frozenset({
    "model", "dataset", "data_root", "pretrained", "weight_file", "method", "targets", "workers", "use_gpu",
    "gpus_per_worker", "cpus_per_worker", "sync_bn", "max_failures", "print_freq", "log_tag", "output", "name",
    "measure_latency",
})  # fmt: skip


def config_columns(cfg: Any) -> dict[str, Any]:
    """``config/<field>`` for every field of a trial's recipe, searched or fixed (dicts flattened
    with '/', lists as text): what ``python -m raysweep.prune --from-trial`` runs again."""
    import dataclasses

    out: dict[str, Any] = {}
    for key, value in dataclasses.asdict(cfg).items():
        if key in NOT_RECIPE:
            continue
        if isinstance(value, dict):
            out.update({f"config/{key}/{k}": v for k, v in value.items() if not isinstance(v, (dict, list))})
        else:
            out[f"config/{key}"] = ",".join(map(str, value)) if isinstance(value, list) else value
    return out


def _recipes(exp_dir: Path, info: dict[str, Any]):
    """trial config -> its config/ columns, from the space saved with the sweep (None without one)."""
    if "space_mapping" not in info:
        return None
    from raysweep.space import load_space, trial_run_config
    from raysweep.space.tune import base_run_config

    try:
        space = load_space(info["space_mapping"])
    except ValueError as exc:  # a space that no longer loads (a file gone): the table goes without them
        log.warning("no config/ columns: the saved space does not load (%s)", exc)
        return None
    base = base_run_config(space, None)
    return lambda config: config_columns(trial_run_config(space, config, base))


def trials_frame(exp_dir: storage.Location) -> pd.DataFrame:
    """One row per trial: id, status, error, method, schedule, ratio/<param>, figures, config/<field>,
    checkpoint; with the dense baseline measured, dense_accuracy and accuracy_drop."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(exp_dir))
    info = load_sweep_info(exp_dir)
    recipe = _recipes(exp_dir, info)
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
        if recipe is not None and config:
            row.update(recipe(config))
        rows.append(row)
    frame = pd.DataFrame(rows)
    dense = info.get("dense") or {}
    if len(frame) and "accuracy" in dense:
        frame["dense_accuracy"] = float(dense["accuracy"])
        if "accuracy" in frame:
            frame["accuracy_drop"] = frame["dense_accuracy"] - pd.to_numeric(frame["accuracy"])
    if len(frame):
        ratio_cols = sorted(c for c in frame.columns if c.startswith("ratio/"))
        front = ["trial_id", "status", "error", "method", "schedule", "point"]
        rest = [c for c in frame.columns if c not in front and c not in ratio_cols]
        frame = frame[front + ratio_cols + rest].sort_values("trial_id", kind="stable").reset_index(drop=True)
    return frame


def build_reports(exp_dir: storage.Location, objectives: Optional[dict[str, str]] = None,
                  title: Optional[str] = None) -> dict[str, storage.Location]:  # fmt: skip
    """Write trials.csv, pareto.csv, report.md/html and pareto.png into the experiment folder.

    A sweep in which no trial finished still gets them all: its objectives are columns of the
    table (empty), its fronts are empty, and its report lists every failed trial with its error."""
    info = load_sweep_info(exp_dir)
    frame = trials_frame(exp_dir)
    if objectives is None:  # the sweep's own (or the default) objectives: columns even when empty
        objectives = dict(info.get("objectives") or DEFAULT_OBJECTIVES)
        for column in objectives:
            if column not in frame.columns:
                frame[column] = float("nan")
    title = title or f"raysweep: {info.get('name', storage.name(exp_dir))}"
    with storage.staged(exp_dir) as out:  # on an object store: written here, then uploaded
        paths = write_reports(frame, out, objectives=objectives, title=title, dense=info.get("dense"))
    return storage.published(paths, out, exp_dir) if storage.is_uri(exp_dir) else paths
