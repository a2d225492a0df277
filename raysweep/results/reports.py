"""Files a finished sweep leaves behind: trials.csv, pareto.csv, report.md/.html, pareto.png.

The trials frame has one row per trial. Columns the sweep produces (only the objectives are
required; ``method`` and ``status`` are used when present, everything else is optional):

- ``trial_id``; ``status`` (Ray's TERMINATED / ERROR / ...; missing = all finished);
  ``error`` (message for failed trials, may be empty);
- ``method`` (pruning method), ``schedule``, ``ratio/<parameter>`` (per-layer prune ratios);
- ``accuracy`` (top-1 val at final sparsity, fraction in [0, 1]), ``top5``;
- ``sparsity`` (of prunable weights), ``sparsity_conv``, ``sparsity_seed``, ``flops_ratio``,
  ``params_remaining``; ``epochs``, ``wall_s``, ``train_s``; ``checkpoint`` (path).

Only finished trials (status TERMINATED, or no status column) enter a front: a failed trial
may carry partial metrics that would otherwise look like a trade-off.
"""
from __future__ import annotations

import base64
import html
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from raysweep.results.plots import plot_axes, plot_pareto
from raysweep.results.status import failed_mask, finished_mask, method_groups
from raysweep.results.pareto import (
    ObjectivesLike,
    ReferenceLike,
    hypervolume,
    knee_point,
    normalize_objectives,
    pareto_front,
    reference_point,
)

logger = logging.getLogger(__name__)

SPARSITY_LEVELS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
# Exact-count pruning gives sparsities like 0.4999999 for a 0.5 target; don't miss those.
_LEVEL_TOLERANCE = 1e-6
_ID_COLUMNS = ("trial_id", "method", "schedule")
_METRIC_COLUMNS = ("accuracy", "top5", "sparsity", "sparsity_conv", "flops_ratio",
                   "params_remaining", "epochs")
_MAX_ERROR_CHARS = 4000

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f0f0f0}pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}
img{max-width:100%}h1{border-bottom:2px solid #ddd}"""

__all__ = ["SPARSITY_LEVELS", "failed_mask", "finished_mask", "pareto_table",
           "plot_pareto", "print_front_table", "write_reports"]


def pareto_table(trials: pd.DataFrame, objectives: ObjectivesLike = None) -> pd.DataFrame:
    """Fronts of the finished trials: overall (``front`` = "all") and per method, stacked."""
    obj = normalize_objectives(objectives, trials)
    done = trials[finished_mask(trials)]
    parts = [("all", pareto_front(done, obj))]
    parts += [(m, pareto_front(g, obj)) for m, g in method_groups(done)]
    frames = [f.assign(front=name) for name, f in parts if not f.empty]
    if not frames:
        return pd.DataFrame(columns=["front", *[c for c in trials.columns if c != "front"]])
    out = pd.concat(frames)
    return out[["front", *[c for c in out.columns if c != "front"]]]


def _table_columns(df: pd.DataFrame, obj: dict[str, str]) -> list[str]:
    wanted = [*_ID_COLUMNS, *obj, *_METRIC_COLUMNS]
    return [c for c in dict.fromkeys(wanted) if c in df.columns]


def _fmt(value: object) -> str:
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() and abs(value) >= 1000 else f"{value:.4f}"
    return str(value)


def _display(df: pd.DataFrame) -> pd.DataFrame:
    """All cells as display strings, so the markdown and html tables read the same."""
    return pd.DataFrame({str(c): [_fmt(v) for v in df[c].tolist()] for c in df.columns})


def _level_table(done: pd.DataFrame) -> pd.DataFrame | None:
    """Best accuracy at sparsity >= level, rows "all" and each method; None if unmeasured."""
    if not {"accuracy", "sparsity"} <= set(done.columns):
        return None
    rows = []
    for name, g in [("all", done), *method_groups(done)]:
        acc, sp = pd.to_numeric(g["accuracy"]), pd.to_numeric(g["sparsity"])
        row = {"method": name}
        for level in SPARSITY_LEVELS:
            best = acc[sp >= level - _LEVEL_TOLERANCE].max()
            row[f"sparsity ≥ {level:g}"] = best
        rows.append(row)
    return pd.DataFrame(rows)


# Accuracy drops from dense (fractions) at which the report gives each method's highest sparsity.
DROP_LEVELS: tuple[float, ...] = (0.005, 0.01, 0.02)


def baseline_blocks(done: pd.DataFrame, dense: Optional[Mapping[str, Any]]) -> list[tuple[str, object]]:
    """The dense model's row, and per method the highest sparsity within 0.5, 1 and 2 points of it."""
    if not dense or "accuracy" not in dense:
        return []
    row = {k: dense[k] for k in ("accuracy", "top5", "params_total", "macs_dense") if k in dense}
    blocks: list[tuple[str, object]] = [("h2", "Dense baseline"), ("table", pd.DataFrame([{"model": "dense", **row}]))]
    if not {"accuracy", "sparsity"} <= set(done.columns):
        return blocks
    rows = []
    for name, g in [("all", done), *method_groups(done)]:
        acc, sp = pd.to_numeric(g["accuracy"]), pd.to_numeric(g["sparsity"])
        rows.append({"method": name, **{f"within {100 * d:g} pt": sp[acc >= dense["accuracy"] - d - _LEVEL_TOLERANCE].max()
                                          for d in DROP_LEVELS}})  # fmt: skip
    blocks += [("p", "Highest sparsity among finished trials whose accuracy is within the given number of "
                     "points (hundredths) of the dense model's; blank where none is."), ("table", pd.DataFrame(rows))]  # fmt: skip
    return blocks


def _sections(trials: pd.DataFrame, obj: dict[str, str], ref: dict[str, float],
              title: str, dense: Optional[Mapping[str, Any]] = None) -> list[tuple[str, object]]:
    """The report as (kind, payload) blocks, rendered to both markdown and html."""
    done = trials[finished_mask(trials)]
    failed = trials[failed_mask(trials)]
    other = len(trials) - len(done) - len(failed)
    counts = f"Trials: {len(trials)} · finished: {len(done)} · failed: {len(failed)}"
    blocks: list[tuple[str, object]] = [("h1", title), ("p", counts + (
        f" · other (not finished): {other}" if other else ""))]
    blocks.append(("p", "Objectives: " + ", ".join(f"{c} ({m})" for c, m in obj.items())
                   + ". Only finished trials enter a front."))
    blocks += baseline_blocks(done, dense)
    front = pareto_front(done, obj)
    blocks += [("h2", f"Overall Pareto front ({len(front)} trials)"),
               ("table", front[_table_columns(front, obj)]), ("img", "pareto.png")]

    levels = _level_table(done)
    if levels is not None:
        blocks += [("h2", "Best accuracy at sparsity levels"),
                   ("p", "Best accuracy among finished trials with sparsity ≥ level; "
                         "blank where no trial reached it."), ("table", levels)]

    hv_rows = [("all", done), *method_groups(done)]
    hv = pd.DataFrame({
        "front": [name for name, _ in hv_rows],
        "finished trials": [len(g) for _, g in hv_rows],
        "front size": [len(pareto_front(g, obj)) for _, g in hv_rows],
        "hypervolume": [hypervolume(g, obj, ref) for _, g in hv_rows],
    })
    ref_text = ", ".join(f"{c} = {v:g}" for c, v in ref.items())
    blocks += [("h2", "Hypervolume"),
               ("p", f"Reference point: {ref_text}. A trial adds volume only if it is strictly "
                     "better than the reference in every objective."), ("table", hv)]

    blocks.append(("h2", "Knee point"))
    if front.empty:
        blocks.append(("p", "No finished trial has all objectives."))
    else:
        knee = knee_point(done, obj).to_frame().T
        blocks += [("p", "The front trial closest to the ideal point after min-max "
                         "normalising each objective over the front: the best trade-off."),
                   ("table", knee[_table_columns(knee, obj)])]

    blocks.append(("h2", f"Failed trials ({len(failed)})"))
    if failed.empty:
        blocks.append(("p", "None."))
    for label, row in failed.iterrows():
        name = f"Trial {row.get('trial_id', label)}"
        if "method" in failed.columns:
            name += f" (method {row['method']})"
        error = _fmt(row.get("error")) or "(no error message recorded)"
        if len(error) > _MAX_ERROR_CHARS:
            error = "…" + error[-_MAX_ERROR_CHARS:]
        blocks += [("p", name + ":"), ("pre", error)]
    return blocks


def _markdown(blocks: list[tuple[str, object]]) -> str:
    out = []
    for kind, payload in blocks:
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + str(payload))
        elif kind == "p":
            out.append(str(payload))
        elif kind == "pre":
            out.append("```\n" + str(payload).replace("```", "'''") + "\n```")
        elif kind == "img":
            out.append(f"![Pareto front]({payload})")
        elif kind == "table":
            table = _display(payload)
            if table.empty:
                out.append("(none)")
                continue

            def cell(text: str) -> str:
                return text.replace("|", "\\|").replace("\n", " ")

            lines = ["| " + " | ".join(cell(c) for c in table.columns) + " |",
                     "|" + "|".join("---" for _ in table.columns) + "|"]
            lines += ["| " + " | ".join(cell(v) for v in row) + " |"
                      for row in table.itertuples(index=False)]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def _html(blocks: list[tuple[str, object]], title: str, png: Path) -> str:
    body = []
    for kind, payload in blocks:
        if kind in ("h1", "h2", "p", "pre"):
            body.append(f"<{kind}>{html.escape(str(payload))}</{kind}>")
        elif kind == "img":
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            body.append(f'<img alt="Pareto front" src="data:image/png;base64,{data}">')
        elif kind == "table":
            table = _display(payload)
            body.append(table.to_html(index=False, escape=True, border=0)
                        if not table.empty else "<p>(none)</p>")
    return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}'
            f"</title>\n<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body)
            + "\n</body></html>\n")


def write_reports(trials: pd.DataFrame, out_dir: str | Path,
                  objectives: ObjectivesLike = None, reference: ReferenceLike = None,
                  title: str = "raysweep sweep", dense: Optional[Mapping[str, Any]] = None) -> dict[str, Path]:
    """Write trials.csv, pareto.csv, report.md, report.html and pareto.png into out_dir;
    ``dense`` (the dense model's accuracy, top5, params_total, macs_dense) adds its baseline.

    Returns ``{"trials", "pareto", "markdown", "html", "plot"}`` -> path. CSVs are written
    without the index (a named index is kept as a column).
    """
    obj = normalize_objectives(objectives, trials)   # fail before writing anything
    ref = reference_point(obj, reference)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"trials": out / "trials.csv", "pareto": out / "pareto.csv",
             "markdown": out / "report.md", "html": out / "report.html",
             "plot": out / "pareto.png"}
    frame = trials.reset_index() if trials.index.name is not None else trials
    frame.to_csv(paths["trials"], index=False)
    pareto_table(frame, obj).to_csv(paths["pareto"], index=False)
    views = plot_axes(obj, frame.columns)
    line = float(dense["accuracy"]) if dense and "accuracy" in dense else None
    plot_pareto(frame, paths["plot"], obj, title=title, axes=views[0], dense_accuracy=line)
    for view in views[1:]:  # e.g. accuracy vs latency beside accuracy vs sparsity
        x = next(iter(view))
        paths[f"plot_{x}"] = plot_pareto(frame, out / f"pareto_{x}.png", obj, title=title, axes=view, dense_accuracy=line)
    blocks = _sections(frame, obj, ref, title, dense)
    paths["markdown"].write_text(_markdown(blocks), encoding="utf-8")
    paths["html"].write_text(_html(blocks, title, paths["plot"]), encoding="utf-8")
    logger.info("wrote sweep reports for %d trials to %s", len(trials), out)
    return paths


def print_front_table(df: pd.DataFrame, objectives: ObjectivesLike = None) -> str:
    """A compact text table of the overall front of the finished trials, for the console."""
    obj = normalize_objectives(objectives, df)
    done = df[finished_mask(df)]
    front = pareto_front(done, obj)
    head = (f"Pareto front ({', '.join(f'{c} {m}' for c, m in obj.items())}): "
            f"{len(front)} of {len(done)} finished trials")
    if front.empty:
        return head
    return head + "\n" + _display(front[_table_columns(front, obj)]).to_string(index=False)
