"""A sweep that stops well. Ctrl-C, SIGTERM (``ray job stop``) and a storage that fails under
the trials all end the same way: Tune's own graceful stop, which saves the experiment with the
running trials still unfinished, so that ``--resume`` continues them; then the reports are
written for what finished.

Tune stops gracefully on SIGINT and SIGUSR1 (its handlers, installed by ``Tuner.fit`` in the
main thread). SIGTERM would kill the driver outright, so ``Interruptions`` turns it into
SIGUSR1; ``StorageGuard`` does the same once trials have failed on the storage ``limit`` times.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ray.tune import Callback

from raysweep.trial.checkpoint import StorageError

log = logging.getLogger("raysweep.sweep")

# Trials that fail on the storage before the sweep stops: one may be a fluke, three is the storage.
STORAGE_FAILURES = 3
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _stop_tune_gracefully() -> None:
    """Tune's graceful stop while ``Tuner.fit`` runs (its SIGUSR1 handler); before or after it, or
    off the main thread, a KeyboardInterrupt that unwinds the driver (Tune's last snapshot stands)."""
    tune_listens = hasattr(signal, "SIGUSR1") and signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None)
    if threading.current_thread() is threading.main_thread() and tune_listens:
        os.kill(os.getpid(), signal.SIGUSR1)
    else:
        raise KeyboardInterrupt("raysweep: stopping the sweep")


def trial_exception(trial: Any) -> Optional[BaseException]:
    """The exception a failed trial raised, from the copy Tune keeps on the driver."""
    import cloudpickle

    path = getattr(trial, "pickled_error_file", None)
    if not path or not Path(path).is_file():
        return None
    try:
        with open(path, "rb") as f:
            error = cloudpickle.load(f)
    except Exception:  # noqa: BLE001 -- an unreadable copy says nothing either way
        return None
    return getattr(error, "cause", None) or error


class StorageGuard(Callback):
    """Counts trials that failed on the storage; at ``limit`` it stops the sweep."""

    def __init__(self, limit: int = STORAGE_FAILURES) -> None:
        self.limit = limit
        self.failures: list[StorageError] = []
        self.tripped = False

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = trial_exception(trial)
        if not isinstance(error, StorageError):
            return
        self.failures.append(error)
        if len(self.failures) >= self.limit and not self.tripped:
            self.tripped = True
            log.error("%d trials failed on the storage (%s): stopping the sweep", len(self.failures), error)
            _stop_tune_gracefully()

    @property
    def error(self) -> Optional[StorageError]:
        return self.failures[-1] if self.tripped else None


@dataclass
class Interruptions:
    """While a sweep runs: SIGTERM stops it as Ctrl-C does; remembers which signal came."""

    received: Optional[int] = None
    _previous: Any = field(default=None, repr=False)

    def __enter__(self) -> "Interruptions":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.received = signal.SIGTERM
        log.warning("SIGTERM: stopping the sweep; its reports are written for what has finished")
        _stop_tune_gracefully()

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def exit_code(self, unfinished: int) -> Optional[int]:
        """130 (SIGINT) or 143 (SIGTERM) for a sweep that stopped with trials unfinished."""
        if not unfinished:
            return None
        return EXIT_SIGNAL[self.received or signal.SIGINT]
