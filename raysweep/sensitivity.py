"""``python -m raysweep.sensitivity``: how much pruning does each layer tolerate on its own?

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

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pruners
from raysweep.engine import RunInputError, init_ray

PROG = "python -m raysweep.sensitivity"
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default=None, help="take model, dataset, data_root and dense weights from this search space (shipped name or YAML)")
    p.add_argument("--model", default=None, help="model name (default digits_cnn, or the space's)")
    p.add_argument("--dataset", default=None, help="dataset name (default digits, or the space's)")
    p.add_argument("--data_root", default=None, help="dataset folder (default: the space's)")
    p.add_argument("--weight_file", default=None, help="dense weights (.pth state dict or raysweep checkpoint); required unless the space names a file")
    p.add_argument("--method", default="irregular", help="prune method whose targets are ratios: irregular, filter, stripe, pattern")
    p.add_argument("--ratios", default=DEFAULT_RATIOS, help=f"comma-separated ratios in (0, 1] (default {DEFAULT_RATIOS})")
    p.add_argument("--batch_size", type=int, default=256, help="evaluation batch size")
    p.add_argument("--out", default="sensitivity", help="output folder (created)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("-q", "--quiet", action="store_true", help="less logging")
    return p


def parse_ratios(text: str) -> list[float]:
    try:
        ratios = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise RunInputError(f"--ratios takes comma-separated numbers like {DEFAULT_RATIOS}, got {text!r}") from None
    bad = [r for r in ratios if not 0.0 < r <= 1.0]
    if not ratios or bad:
        raise RunInputError(f"--ratios must be in (0, 1], got {text!r}")
    return ratios


def _from_space(args: argparse.Namespace) -> tuple[str, str, str | None, str | None]:
    from raysweep.space import load_space

    clash = [f"--{k}" for k in ("model", "dataset") if getattr(args, k)]
    if clash:
        raise RunInputError(f"--space sets the model and dataset; drop {' and '.join(clash)}")
    space = load_space(args.space)
    weights = args.weight_file or space.dense_weights
    if weights is None:
        raise RunInputError(
            f"space {space.name!r} trains its dense weights during a sweep (dense: train); pass --weight_file "
            "(a sweep caches them as <storage>/dense/<dataset>-<model>-.../final.pt)"
        )
    return space.model, space.dataset, args.data_root or space.data_root, weights


def resolve_job(args: argparse.Namespace) -> Job:
    """Every check that needs no Ray: names, ratios, files, weights loading into the model."""
    from raysweep.config import RunConfig
    from raysweep.data import build_datasets
    from raysweep.engine import check_inputs
    from raysweep.space_validate import build_model

    ratios = parse_ratios(args.ratios)
    try:
        method = pruners.get_method(args.method)
        pruners.skip_reason(method, (8, 8), ratios[-1])  # a ratio must be a target of this method
    except ValueError as err:
        raise RunInputError(f"--method {args.method}: the ladder is made of --ratios, which it does not take ({err})") from None
    if args.batch_size < 1:
        raise RunInputError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.space:
        model, dataset, data_root, weights = _from_space(args)
    else:
        model, dataset, data_root, weights = args.model or "digits_cnn", args.dataset or "digits", args.data_root, args.weight_file
        if not weights:
            raise RunInputError("dense weights are required: --weight_file FILE, or --space with a `dense:` file (this command never trains)")
    check_inputs(RunConfig(model=model, dataset=dataset, data_root=data_root, weight_file=weights))
    num_classes = build_datasets(dataset, data_root, augment=False)[2].num_classes
    meta = build_model(model, dataset)
    layers = [n for n in pruners.prunable_parameters(meta) if pruners.skip_reason(method, meta.get_parameter(n).shape, ratios[-1]) is None]
    if not layers:
        raise RunInputError(f"method {method.name!r} can prune no layer of {model}")
    return Job(model, dataset, data_root, str(Path(weights).resolve()), method.name, ratios, layers, num_classes, args.batch_size)


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


def accuracy(model: Any, loader: Any) -> float:
    """Val top-1 as a fraction (masked weights computed once per evaluation)."""
    import torch

    correct = total = 0
    with torch.no_grad(), torch.nn.utils.parametrize.cached():
        for x, y in loader:
            correct += int((model(x).argmax(dim=1) == y).sum())
            total += len(y)
    return correct / total


def dense_task(job: Job, state: dict) -> float:
    return accuracy(*_setup(job, state))


def layer_task(job: Job, state: dict, layer: str) -> list[tuple[float, float]]:
    """(ratio, accuracy) with only ``layer`` pruned, for every ratio of the ladder."""
    import torch

    model, loader = _setup(job, state)
    method = pruners.get_method(job.method)
    weights = [m.weight for n, m in pruners.ratio_config.prunable_modules(model).items()
               if pruners.skip_reason(method, m.weight.shape, job.ratios[-1]) is None]  # fmt: skip
    # Model-wide options (PatDNN's pattern library) as a whole-model prune would choose them.
    options = dict(method.model_options(weights)) if method.model_options else {}
    module = pruners.ratio_config.prunable_modules(model)[layer]
    original = module.weight.detach().clone()
    out = []
    for ratio in job.ratios:
        pruners.prepare(model, {layer: ratio}, method, **options)
        out.append((ratio, accuracy(model, loader)))
        pruners.squash(model)
        with torch.no_grad():
            module.weight.copy_(original)
    return out


def measure(job: Job) -> list[dict[str, Any]]:
    """The table's rows, layers in model order, ratios ascending; tasks run in parallel on Ray."""
    import ray

    from raysweep.loop import load_weights
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out).expanduser().resolve()
    try:
        if out.exists() and not out.is_dir():
            raise RunInputError(f"--out {out} is a file, not a folder")
        job = resolve_job(args)
    except (RunInputError, ValueError, FileNotFoundError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    init_ray(args.address)
    try:
        rows = measure(job)
    except Exception as exc:  # noqa: BLE001 -- a failed task: RayTaskError and friends
        print(f"{PROG}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    paths = write_outputs(job, rows, out)
    worst = max(rows, key=lambda r: r["accuracy_drop"])
    print(f"dense top-1 {rows[0]['dense_accuracy']:.4f}; {len(job.layers)} layers x {len(job.ratios)} ratios; "
          f"largest drop {worst['accuracy_drop']:.4f} ({worst['layer']} at {worst['ratio']:g})")  # fmt: skip
    for key, path in paths.items():
        print(f"  {key:5s} {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
