"""``python -m raysweep.train``: train (or continue training) one model on Ray Train with DDP."""
from __future__ import annotations

from typing import Optional

from raysweep.trial.flags import base_parser, config_from_args, main_with
from raysweep.config import RunConfig

PROG = "python -m raysweep.train"


def main(argv: Optional[list[str]] = None) -> int:
    parser = base_parser(PROG, "Train a model from scratch (or continue from --weight_file) on Ray Train.", RunConfig())
    return main_with(parser, config_from_args, PROG, argv)


if __name__ == "__main__":
    raise SystemExit(main())
