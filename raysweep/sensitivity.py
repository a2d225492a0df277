"""``python -m raysweep.sensitivity``: each prunable layer pruned alone at a ladder of ratios,
one-shot, as Ray tasks; the table a search space's ``sensitivity`` allocation family reads
(raysweep.space.sensitivity). Dense weights are required (``--weight_file``, or a ``--space``
whose ``dense`` is a file): this command never trains. Bad input exits 2 before Ray starts.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pruners
from raysweep import ray_env
from raysweep.errors import RunInputError
from raysweep.space.sensitivity import DEFAULT_RATIOS, Job, measure, write_outputs

PROG = "python -m raysweep.sensitivity"


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
    from raysweep.space.targets import build_model
    from raysweep.trial.runner import check_inputs

    ratios = parse_ratios(args.ratios)
    try:
        method = pruners.get_method(args.method)
        pruners.check_target(method, ratios[-1])  # the ladder's ratios must be targets of this method
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
    layers = [n for n in pruners.prunable_parameters(meta) if pruners.skip_reason(method, meta.get_submodule(n.rpartition(".")[0]), ratios[-1]) is None]
    if not layers:
        raise RunInputError(f"method {method.name!r} can prune no layer of {model}")
    return Job(model, dataset, data_root, str(Path(weights).resolve()), method.name, ratios, layers, num_classes, args.batch_size)


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
    ray_env.init_ray(args.address)
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
