"""``python -m raysweep.search``: the sweep. With no arguments it runs the embedded default
(digits, all five methods) on any laptop; ``--space`` picks a shipped space or a YAML file;
``--resume --name NAME`` continues an interrupted sweep with the space it was saved with."""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from typing import Any, Optional

PROG = "python -m raysweep.search"
EXIT_INPUT, EXIT_FAILED = 2, 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--space", default=None, help="shipped space name (digits, cifar10_vgg16, cifar10_resnet56, imagenet_resnet18), a YAML file, or a reference prune_config YAML (one fixed trial); default: digits")
    p.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE", help="override a space field, e.g. --set trials=8 (8 searched trials beside the space's fixed points) --set resources.workers_per_trial=2 (repeatable)")
    p.add_argument("--storage", default="raysweep_results", help="folder or URI holding experiments: a path, or s3://bucket/prefix, gs://bucket/prefix, any URI pyarrow.fs understands (AWS_* variables, AWS_ENDPOINT_URL for S3-compatible servers); on a multi-node cluster a URI, or a path every node sees at the same place")
    p.add_argument("--name", default=None, help="experiment name, one folder name (default: the space's name)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted experiment --storage/--name with the space it was saved with; finished trials are not re-run")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and the final summary only")
    p.add_argument("-v", "--verbose", action="store_true", help="also the workers' logs and Ray's own messages")
    return p


def configure_console(quiet: bool, verbose: bool) -> None:
    """raysweep's lines at INFO (WARNING with -q); Ray's, Tune's and Optuna's only with -v."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        for name in ("ray", "ray.tune", "ray.train", "optuna"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # Tune's own words on a stop (its Tuner.restore hint, the unfinished trials' list): the
        # summary says what to do in raysweep's terms.
        logging.getLogger("ray.tune.tune").setLevel(logging.CRITICAL)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)


def resume_command(name: str, storage: Any, address: Optional[str]) -> str:
    parts = [*PROG.split(), "--resume", "--name", name, "--storage", str(storage)]
    return shlex.join(parts + (["--address", address] if address else []))


def _prepare(args: argparse.Namespace):
    """(space, storage, experiment name) after every check that needs no Ray."""
    from raysweep import storage as locations
    from raysweep.space import load_space
    from raysweep.errors import check_name
    from raysweep.sweep.inputs import check_space_inputs, check_storage, experiment_name, resume_space

    storage = check_storage(args.storage)
    if args.resume:
        name = check_name(args.name or load_space(args.space).name)
        space = resume_space(locations.join(storage, name), args.space, args.overrides or [])
    else:
        space = load_space(args.space, args.overrides or ())
        name = experiment_name(storage, check_name(args.name or space.name, "--name" if args.name else "the space's name"), False)
    check_space_inputs(space)
    return space, storage, name


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    configure_console(args.quiet, args.verbose)
    from raysweep.errors import RunInputError

    try:
        space, storage, name = _prepare(args)
    except (RunInputError, ValueError, FileNotFoundError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_INPUT

    from raysweep.sweep.driver import run_sweep
    from raysweep.sweep.inputs import sweep_info

    info = None if args.resume else sweep_info(name, args.space, args.overrides or [], space)
    resume = resume_command(name, storage, args.address)
    try:
        run = run_sweep(space, storage, name, resume=args.resume, address=args.address, info=info, verbose=args.verbose)
    except (RunInputError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted before the trials started; resume with: {resume}", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"{PROG}: sweep failed: {type(exc).__name__}: {exc} (resume with: {resume})", file=sys.stderr)
        if isinstance(exc, ConnectionError) and os.environ.get("RAY_AUTH_MODE") != "token":
            # Ray sends a token to an address given explicitly only in token mode.
            print(f"{PROG}: if the cluster uses token authentication: export RAY_AUTH_MODE=token (token in ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)", file=sys.stderr)
        return EXIT_FAILED
    return summarise(run, space, resume)


def summarise(run, space, resume: str) -> int:
    """Reports for what finished, the front and the files; the exit code says how it ended."""
    from raysweep import storage as locations
    from raysweep.results.collect import build_reports
    from raysweep.results.reports import print_front_table
    from raysweep.sweep.tracking import finish_tracking

    try:
        paths = build_reports(run.exp_dir)  # the sweep's objectives, from its sweep.json
    except OSError as exc:
        reason = f"[Errno {exc.errno}] {exc.strerror}: {exc.filename}" if exc.errno is not None else str(exc)
        print(f"{PROG}: error: cannot write the reports in {run.exp_dir}: {reason}", file=sys.stderr)
        paths = None
    if run.storage_error is not None:
        e = run.storage_error
        print(f"{PROG}: error: the storage failed: {e.reason}: {e.path}. The sweep stopped; "
              f"fix the storage, then resume with: {resume}", file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    if paths is None:
        return EXIT_FAILED
    import pandas as pd

    with locations.open_input(paths["trials"]) as f:
        trials = pd.read_csv(f)
    status = trials["status"] if "status" in trials else pd.Series(dtype=str)
    finished, failed = int((status == "TERMINATED").sum()), int((status == "ERROR").sum())
    finish_tracking(run.trackers, paths, {"trials": len(trials), "finished": finished, "failed": failed})
    print()
    print(print_front_table(trials, space.objectives))
    print(f"\n{len(trials)} trials: {finished} finished, {failed} failed, {len(trials) - finished - failed} unfinished. Files in {run.exp_dir}:")
    for key, path in paths.items():
        print(f"  {key:9s} {path}")
    if run.signal_exit is not None:
        print(f"\n{PROG}: interrupted; resume with: {resume}", file=sys.stderr)
        return run.signal_exit
    if len(trials) and not finished:
        print(f"{PROG}: no trial finished: {failed} of {len(trials)} failed (errors in {paths['markdown']})", file=sys.stderr)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
