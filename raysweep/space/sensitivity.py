"""How much pruning does each layer tolerate on its own? (``python -m raysweep.sensitivity``)

Each prunable layer is pruned alone at every ratio of a ladder (one-shot, no fine-tuning) and
the model's val top-1 is measured, one Ray task per layer (1 CPU each) plus one for the dense
model. ``--out`` receives:

``sensitivity.csv``   layer, ratio, accuracy, accuracy_drop (dense - pruned), dense_accuracy
``sensitivity.png``   accuracy vs ratio, one line per layer
``sensitivity.json``  what was measured (model, dataset, method, weights, ratios, layers)

A search space's ``allocation: {family: sensitivity, table: .../sensitivity.csv}`` reads the
CSV (``pruners.allocation``). Dense weights are required (``--weight_file``, or a ``--space``
whose ``dense`` is a file): this command never trains. Bad input exits 2 before Ray starts.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pruners
from raysweep.trial.epoch import top1

DEFAULT_RATIOS = "0.1,0.3,0.5,0.7,0.9"
COLUMNS = ["layer", "ratio", "accuracy", "accuracy_drop", "dense_accuracy"]

log = logging.getLogger("raysweep.sensitivity")


@dataclass
class Job:
    """Checked inputs of one sensitivity analysis."""

    model: str
    dataset: str
    data_root: str | None
    weight_file: str
    method: str
    ratios: list[float]
    layers: list[str]
    num_classes: int
    batch_size: int = 256


# ------------------------------------------------------------------------- Ray tasks
# ------------------------------------------------------------------------- Ray tasks
def _setup(job: Job, state: dict) -> tuple[Any, Any]:
    """(model with the dense weights, val loader) inside a task; one thread per task's CPU."""
    import torch
    from torch.utils.data import DataLoader

    from raysweep.data import build_datasets
    from raysweep.models import create_model

    torch.set_num_threads(1)
    _, val, _ = build_datasets(job.dataset, job.data_root, augment=False)
    model = create_model(job.model, num_classes=job.num_classes, dataset=job.dataset)
    model.load_state_dict(state)
    return model.eval(), DataLoader(val, batch_size=job.batch_size, shuffle=False)


def dense_task(job: Job, state: dict) -> float:
    return top1(*_setup(job, state))


def layer_task(job: Job, state: dict, layer: str) -> list[tuple[float, float]]:
    """(ratio, accuracy) with only ``layer`` pruned, for every ratio of the ladder."""
    import torch

    model, loader = _setup(job, state)
    method = pruners.get_method(job.method)
    weights = [m.weight for n, m in pruners.ratio_config.prunable_modules(model).items()
               if pruners.skip_reason(method, m, job.ratios[-1]) is None]  # fmt: skip
    # Model-wide options (PatDNN's pattern library) as a whole-model prune would choose them.
    options = dict(method.model_options(weights)) if method.model_options else {}
    # Masks reach past the layer's weight (biases, BatchNorms, a channel group): restore everything.
    original = {k: v.clone() for k, v in model.state_dict().items()}
    if method.graph is not None:  # a graph method (channel) traces the model
        options["example_input"] = torch.zeros_like(next(iter(loader))[0][:1])
    out = []
    for ratio in job.ratios:
        pruners.prepare(model, {layer: ratio}, method, **options)
        out.append((ratio, top1(model, loader)))
        pruners.squash(model)
        model.load_state_dict(original)
    return out


def measure(job: Job) -> list[dict[str, Any]]:
    """The table's rows, layers in model order, ratios ascending; tasks run in parallel on Ray."""
    import ray

    from raysweep.trial.checkpoint import load_weights
    from raysweep.models import create_model

    model = create_model(job.model, num_classes=job.num_classes, dataset=job.dataset)
    load_weights(model, job.weight_file)
    state = ray.put(model.state_dict())
    dense_ref = ray.remote(num_cpus=1)(dense_task).remote(job, state)
    refs = {ray.remote(num_cpus=1)(layer_task).remote(job, state, layer): layer for layer in job.layers}
    results: dict[str, list] = {}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        results[refs[done[0]]] = ray.get(done[0])
        log.info("measured %s (%d/%d layers)", refs[done[0]], len(results), len(refs))
    dense = ray.get(dense_ref)
    return [
        {"layer": layer, "ratio": ratio, "accuracy": acc, "accuracy_drop": dense - acc, "dense_accuracy": dense}
        for layer in job.layers
        for ratio, acc in results[layer]
    ]


# ------------------------------------------------------------------------- files
# ------------------------------------------------------------------------- files
def plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for layer in dict.fromkeys(r["layer"] for r in rows):
        mine = [r for r in rows if r["layer"] == layer]
        ax.plot([0.0] + [r["ratio"] for r in mine], [mine[0]["dense_accuracy"]] + [r["accuracy"] for r in mine], "o-", label=layer, ms=3)
    ax.axhline(rows[0]["dense_accuracy"], color="black", ls="--", lw=0.8, label="dense")
    ax.set_xlabel("ratio of the layer pruned (one-shot, no fine-tuning)")
    ax.set_ylabel("val top-1")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", ncol=1 + len({r["layer"] for r in rows}) // 16)
    fig.savefig(path, dpi=120)
    return path


def write_outputs(job: Job, rows: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    paths = {"table": out / "sensitivity.csv", "plot": out / "sensitivity.png", "info": out / "sensitivity.json"}
    pd.DataFrame(rows, columns=COLUMNS).to_csv(paths["table"], index=False)
    plot(rows, paths["plot"], f"{job.model} / {job.dataset}: {job.method} sensitivity")
    paths["info"].write_text(json.dumps({**asdict(job), "dense_accuracy": rows[0]["dense_accuracy"]}, indent=2) + "\n")
    return paths
