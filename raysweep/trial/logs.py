"""A trial's log lines in its own folder (``trials/<id>/run.log``), not on the sweep's console."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOGGERS = ("raysweep", "pruners")
FORMAT = logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s", "%m/%d %H:%M:%S")


@contextmanager
def trial_log(folder: Path) -> Iterator[None]:
    """raysweep's and pruners' INFO lines go to ``<folder>/run.log`` while the block runs (a
    reused Tune process serves trial after trial: each gets its own file). A folder that cannot
    be written (a failing storage) only loses the log; the trial's checkpoints report the failure."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(folder / "run.log")
    except OSError:
        yield
        return
    handler.setFormatter(FORMAT)
    handler.setLevel(logging.INFO)
    loggers = [logging.getLogger(name) for name in LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)
        handler.close()
