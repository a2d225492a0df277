"""``python -m raysweep.report EXPERIMENT``: rebuild trials.csv, pareto.csv, report.md/html
and pareto.png from a finished or interrupted sweep, in its folder or at its storage URI."""
from __future__ import annotations

import argparse
import sys
from typing import Optional

PROG = "python -m raysweep.report"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("experiment", help="the experiment, <storage>/<name>: a folder, or a URI such as s3://bucket/prefix/<name>")
    p.add_argument("--objective", action="append", default=None, metavar="COLUMN:MODE", help="e.g. accuracy:max (repeatable; default: the sweep's objectives)")
    args = p.parse_args(argv)
    from raysweep import storage

    exp_dir = storage.absolute(args.experiment)
    try:
        if storage.is_uri(exp_dir):
            storage.probe(str(exp_dir), storage.storage_timeout())
        found = storage.is_dir(exp_dir)
    except (ValueError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if not found:
        print(f"{PROG}: error: no experiment folder at {exp_dir}", file=sys.stderr)
        return 2
    objectives = None
    if args.objective:
        try:
            objectives = dict(o.split(":", 1) for o in args.objective)
        except ValueError:
            print(f"{PROG}: error: --objective takes COLUMN:MODE, e.g. accuracy:max", file=sys.stderr)
            return 2
    from raysweep.results.collect import build_reports

    try:
        paths = build_reports(exp_dir, objectives)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    for key, path in paths.items():
        print(f"{key:9s} {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
