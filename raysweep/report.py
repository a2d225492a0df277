"""``python -m raysweep.report EXPERIMENT_DIR``: rebuild trials.csv, pareto.csv, report.md/html
and pareto.png from a finished or interrupted sweep."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

PROG = "python -m raysweep.report"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("experiment", help="the experiment folder, <storage>/<name>")
    p.add_argument("--objective", action="append", default=None, metavar="COLUMN:MODE", help="e.g. accuracy:max (repeatable; default: the sweep's objectives)")
    args = p.parse_args(argv)
    exp_dir = Path(args.experiment).expanduser().resolve()
    if not exp_dir.is_dir():
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
