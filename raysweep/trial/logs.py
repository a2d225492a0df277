"""A trial's log lines in its own folder (``trials/<id>/run.log``), not on the sweep's console."""
from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from raysweep import storage

LOGGERS = ("raysweep", "pruners")
FORMAT = logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s", "%m/%d %H:%M:%S")


@contextmanager
def trial_log(folder: storage.Location) -> Iterator[None]:
    """raysweep's and pruners' INFO lines go to ``<folder>/run.log`` while the block runs (a
    reused Tune process serves trial after trial: each gets its own file). A folder that cannot
    be written (a failing storage) only loses the log; the trial's checkpoints report the failure.
    On an object store the lines go to a local file, uploaded when the block ends."""
    if storage.is_uri(folder):
        with _uploaded_log(folder):
            yield
        return
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(folder / "run.log")
    except OSError:
        yield
        return
    with _attached(handler):
        yield


@contextmanager
def _uploaded_log(folder: str) -> Iterator[None]:
    with tempfile.TemporaryDirectory(prefix="raysweep-log-") as tmp:
        try:
            with _attached(logging.FileHandler(Path(tmp) / "run.log")):
                yield
        finally:
            try:
                storage.write_bytes(storage.join(folder, "run.log"), (Path(tmp) / "run.log").read_bytes())
            except Exception as exc:  # noqa: BLE001 -- the log is best effort, as in a local folder
                logging.getLogger("raysweep.trial").warning("could not upload the trial's log to %s: %s", folder, exc)


@contextmanager
def _attached(handler: logging.Handler) -> Iterator[None]:
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
