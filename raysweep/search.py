"""``python -m raysweep.search``: the sweep. With no arguments it runs the embedded default
(digits, all five methods) on any laptop; ``--space`` picks a shipped space or a YAML file."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Optional

PROG = "python -m raysweep.search"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--space", default=None, help="shipped space name (digits, cifar10_vgg16, cifar10_resnet56, imagenet_resnet18), a YAML file, or a reference prune_config YAML (one fixed trial); default: digits")
    p.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE", help="override a space field, e.g. --set trials=8 --set resources.workers_per_trial=2 (repeatable)")
    p.add_argument("--storage", default="raysweep_results", help="folder holding experiments; on a multi-node cluster a shared filesystem path that every node sees at the same place")
    p.add_argument("--name", default=None, help="experiment name (default: the space's name)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted experiment --storage/--name; finished trials are not re-run")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("-q", "--quiet", action="store_true", help="less logging")
    return p


def check_space_inputs(space) -> None:
    """Data and dense weights must exist before Ray starts (the space itself is already valid)."""
    from raysweep.data import build_datasets
    from raysweep.errors import RunInputError
    from raysweep.space import DENSE_TRAIN

    try:
        build_datasets(space.dataset, space.data_root)
    except (ValueError, FileNotFoundError) as exc:
        raise RunInputError(str(exc)) from None
    if space.dense != DENSE_TRAIN and not os.path.isfile(space.dense):
        raise RunInputError(f"dense weights not found: {space.dense} (set `dense: train` to train them once)")


def experiment_name(storage: Path, name: str, resume: bool) -> str:
    """A new sweep never mixes with an old one: ``name``, ``name-2``, ...; --resume keeps it.
    A folder that holds no more than a sweep.json is a sweep that never started: its name is free."""
    from raysweep.results.collect import SWEEP_FILE

    if resume:
        return name
    candidate, n = name, 1
    while (storage / candidate).exists() and any(p.name != SWEEP_FILE for p in (storage / candidate).iterdir()):
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from raysweep.errors import RunInputError
    from raysweep.space import load_space

    try:
        space = load_space(args.space, args.overrides or ())
        check_space_inputs(space)
    except (RunInputError, ValueError, FileNotFoundError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if "://" in args.storage:
        # Reports and the dense-weight cache are written with plain file I/O: a URI would become a local folder.
        print(f"{PROG}: error: --storage {args.storage}: URIs are not supported; use a filesystem path every node sees (NFS, or the bucket mounted)", file=sys.stderr)
        return 2
    storage = Path(args.storage).expanduser().resolve()
    name = experiment_name(storage, args.name or space.name, args.resume)
    if args.resume and not (storage / name).is_dir():
        print(f"{PROG}: error: --resume: no experiment at {storage / name}", file=sys.stderr)
        return 2

    from raysweep.results.collect import build_reports
    from raysweep.results.reports import print_front_table
    from raysweep.sweep.driver import run_sweep

    info = None if args.resume else {"name": name, "space": str(args.space or "digits"), "overrides": args.overrides or [], "objectives": space.objectives}
    try:
        exp_dir = run_sweep(space, storage, name, resume=args.resume, address=args.address, info=info)
    except (RunInputError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"{PROG}: sweep failed: {type(exc).__name__}: {exc} (resume with --resume --name {name})", file=sys.stderr)
        if isinstance(exc, ConnectionError) and os.environ.get("RAY_AUTH_MODE") != "token":
            # Ray sends a token to an address given explicitly only in token mode.
            print(f"{PROG}: if the cluster uses token authentication: export RAY_AUTH_MODE=token (token in ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)", file=sys.stderr)
        return 1
    paths = build_reports(exp_dir, space.objectives)
    import pandas as pd

    trials = pd.read_csv(paths["trials"])
    print()
    print(print_front_table(trials, space.objectives))
    failed = trials[trials["status"] != "TERMINATED"] if "status" in trials else trials.iloc[0:0]
    print(f"\n{len(trials)} trials, {len(failed)} not finished. Files in {exp_dir}:")
    for key, path in paths.items():
        print(f"  {key:9s} {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
