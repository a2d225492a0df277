"""The sweep's console: one view of its progress instead of Tune's tables and the workers' logs.

On a terminal one status line updates in place (trials done / running / failed, elapsed, ETA,
the best accuracy so far per sparsity band); elsewhere (a log file, CI) the same line is printed
every ``period_s``. Each finished or failed trial gets one line either way. The workers' own
logs go to the trial folders (``trials/<id>/run.log``); ``-v`` brings them back to the console.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Optional, TextIO

from ray.tune import Callback

BANDS = (0.5, 0.8, 0.9)  # sparsity levels the status line reports the best accuracy at


def _error_line(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    if not path or not Path(path).is_file():
        return "failed"
    lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:160] if lines else "failed"


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


class ProgressView(Callback):
    """A Tune callback that draws the sweep's progress (see the module doc)."""

    def __init__(self, planned: Optional[int], concurrency: int, stream: Optional[TextIO] = None,
                 period_s: float = 30.0, header: str = "") -> None:  # fmt: skip
        self.planned, self.concurrency, self.period_s, self.header = planned, max(concurrency, 1), period_s, header
        self.stream = stream
        self.start = time.monotonic()
        self.last_status = 0.0
        self.done: dict[str, dict[str, Any]] = {}  # trial id -> its last result
        self.failed: set[str] = set()
        self.running: set[str] = set()
        self.durations: list[float] = []
        self.seeded = False

    def __getstate__(self) -> dict:  # Tune pickles its callbacks with the experiment
        return {**self.__dict__, "stream": None}

    @property
    def out(self) -> TextIO:
        return self.stream or sys.stdout

    @property
    def interactive(self) -> bool:
        return bool(getattr(self.out, "isatty", lambda: False)())

    def unfinished(self) -> int:
        """Trials not finished nor failed when the sweep ended (a grid's unknown size aside)."""
        if self.planned is None:
            return len(self.running)
        return max(self.planned - len(self.done) - len(self.failed), len(self.running))

    # ------------------------------------------------------------------ Tune's hooks
    def setup(self, **info: Any) -> None:
        self.start = time.monotonic()
        if self.header:
            self._line(self.header)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self.failed.discard(trial.trial_id)  # a failed trial a resume retries

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        result = dict(trial.last_result or {})
        self.done[trial.trial_id] = result
        self.durations.append(float(result.get("time_total_s", 0.0)))
        self._line(f"{self._count()} {trial.trial_id} {result.get('method', '?')} {result.get('schedule', '')}".rstrip()
                   + f"  acc {result.get('accuracy', math.nan):.4f}  sparsity {result.get('sparsity', math.nan):.4f}"
                   + f"  {result.get('epoch', -1) + 1} epochs  {result.get('time_total_s', 0.0):.1f} s")  # fmt: skip

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        self.done.pop(trial.trial_id, None)
        self.failed.add(trial.trial_id)
        method = (trial.last_result or {}).get("method") or (trial.config or {}).get("method") or "?"
        self._line(f"{self._count()} {trial.trial_id} {method}  FAILED  {_error_line(trial)}")

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self.seeded:  # a resumed sweep: what finished before counts too
            self.seeded = True
            for trial in trials:
                if trial.status == "TERMINATED" and trial.trial_id not in self.done:
                    self.done[trial.trial_id] = dict(trial.last_result or {})
                elif trial.status == "ERROR":
                    self.failed.add(trial.trial_id)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if self.interactive and now - self.last_status >= 0.5:
            self.out.write("\r\033[K" + self.status())
            self.out.flush()
            self.last_status = now
        elif not self.interactive and now - self.last_status >= self.period_s:
            self._line(self.status())

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.interactive:
            self.out.write("\r\033[K")
        self.out.write(self.status() + "\n")
        self.out.flush()

    # ------------------------------------------------------------------ text
    def _count(self) -> str:
        n = len(self.done) + len(self.failed)
        total = self.planned or n
        return f"[{n:>{len(str(total))}}/{total}]"

    def _line(self, text: str) -> None:
        if self.interactive:
            self.out.write("\r\033[K")
        self.out.write(text + "\n")
        self.out.flush()
        self.last_status = time.monotonic()

    def status(self) -> str:
        elapsed = time.monotonic() - self.start
        finished = len(self.done) + len(self.failed)
        parts = [f"done {len(self.done)}" + (f"/{self.planned}" if self.planned else ""),
                 f"running {len(self.running)}", f"failed {len(self.failed)}", f"{_clock(elapsed)} elapsed"]  # fmt: skip
        if self.planned and finished and self.durations:
            left = self.planned - finished
            per_trial = sum(self.durations) / len(self.durations)
            parts.append(f"ETA {_clock(left * per_trial / self.concurrency)}")
        best = self.best_by_band()
        if best:
            parts.append("best acc " + ", ".join(f"sparsity>={band:g}: {acc:.4f}" for band, acc in best.items()))
        return " | ".join(parts)

    def best_by_band(self) -> dict[float, float]:
        best: dict[float, float] = {}
        for band in BANDS:
            accs = [r["accuracy"] for r in self.done.values() if r.get("sparsity", -1) >= band - 1e-6 and "accuracy" in r]
            if accs:
                best[band] = max(accs)
        return best
