"""The front plots: accuracy against each other objective, one colour per method, the
dense model's accuracy as a line. Drawn on matplotlib's Agg canvas, so a notebook's pyplot
backend is left alone."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from raysweep.results.pareto import ObjectivesLike, normalize_objectives, pareto_front
from raysweep.results.status import finished_mask, method_groups


def plot_axes(objectives: Mapping[str, str], columns) -> list[dict[str, str]]:
    """The 2-D views of the objectives: accuracy against each other objective (sparsity first),
    or the first two objectives when accuracy is not one of them."""
    obj = dict(objectives)
    if "accuracy" not in obj:
        if {"sparsity", "accuracy"} <= set(columns) and len(obj) < 2:
            return [{"sparsity": obj.get("sparsity", "max"), "accuracy": "max"}]
        return [dict(list(obj.items())[:2])]
    others = sorted((k for k in obj if k != "accuracy"), key=lambda k: k != "sparsity")
    if not others:
        others = ["sparsity"] if "sparsity" in columns else []
    return [{k: obj.get(k, "max"), "accuracy": obj["accuracy"]} for k in others] or [{"accuracy": obj["accuracy"]}]


def plot_pareto(trials: pd.DataFrame, path: str | Path,
                objectives: ObjectivesLike = None, title: str = "",
                axes: Mapping[str, str] | None = None, dense_accuracy: Optional[float] = None) -> Path:
    """Accuracy vs sparsity (or ``axes``: x then y objective), one colour per method, each
    method's front as a step line.

    Finished trials only. Fronts and fading use the two plotted axes (extra objectives are
    ignored here; ``write_reports`` draws one plot per pair); the overall front gets black
    edges. Uses the Agg canvas directly, so the caller's pyplot backend is left alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    import matplotlib

    obj = normalize_objectives(objectives, trials)
    axes = dict(axes) if axes else plot_axes(obj, trials.columns)[0]
    done = trials[finished_mask(trials)]
    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if len(axes) < 2:  # a single objective: plot it against trial order
        (ycol,) = axes
        ax.plot(np.arange(1, len(done) + 1), pd.to_numeric(done[ycol]), "o")
        ax.set_xlabel("trial")
        ax.set_ylabel(ycol)
    else:
        xcol, ycol = axes
        where = "pre" if axes[xcol] == "max" else "post"
        groups = method_groups(done) or [("trials", done)]
        colours = matplotlib.colormaps["tab10"]
        for i, (name, g) in enumerate(groups):
            colour = colours(i % 10)
            front = pareto_front(g, axes)
            rest = g.drop(index=front.index)
            ax.scatter(rest[xcol], rest[ycol], color=colour, alpha=0.25, s=22)
            ax.scatter(front[xcol], front[ycol], color=colour, alpha=0.9, s=30, label=name)
            line = front.sort_values(xcol)
            ax.step(line[xcol], line[ycol], where=where, color=colour, alpha=0.8)
        overall = pareto_front(done, axes)
        if not overall.empty:
            ax.scatter(overall[xcol], overall[ycol], facecolors="none", edgecolors="black",
                       s=70, linewidths=1.0, label="overall front")
        arrow = {"max": "higher is better", "min": "lower is better"}
        ax.set_xlabel(f"{xcol} ({arrow[axes[xcol]]})")
        ax.set_ylabel(f"{ycol} ({arrow[axes[ycol]]})")
        if dense_accuracy is not None and ycol == "accuracy":
            ax.axhline(dense_accuracy, color="black", ls="--", lw=0.9, label=f"dense {dense_accuracy:.4f}")
        if (groups and not done.empty) or dense_accuracy is not None:
            ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    ax.set_title(title or "Pareto front")
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
