"""The bookkeeping between a sweep's Tune trials and its DDP worker groups (raysweep.sweep.pool).

Trials wait here for a slot; a slot's rank 0 takes the next one; each trial has an inbox the
Tune trial reads its epochs from. Plain asyncio, so the rules are tested without Ray; the pool
runs it as an async Ray actor.
"""
from __future__ import annotations

import asyncio
import collections
from typing import Any, Optional

# A trial whose worker group dies under it (not by its own exception) is resumed this often.
MAX_ATTEMPTS = 3

# An idle group's ranks meet this often (s), well inside the process group's collective timeout.
IDLE_WAIT_S = 60.0

IDLE = {"idle": True}



class TrialDispatcher:
    """Trials waiting for a slot, the slots' running trials, and each trial's message inbox
    (an async Ray actor, ``Dispatcher``; plain asyncio in tests).

    Messages to a trial: ``("result", metrics)`` per epoch, then ``("done", None)``,
    ``("error", text)`` or ``("cancelled", None)``; nothing is accepted after the last."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.pending: collections.deque[str] = collections.deque()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.inbox: dict[str, list[tuple[str, Any]]] = collections.defaultdict(list)
        self.running: dict[int, str] = {}
        self.closed: set[str] = set()
        self.attempts: collections.Counter[str] = collections.Counter()
        self.dead_slots: dict[int, str] = {}
        self.taken: collections.Counter[int] = collections.Counter()  # trials each slot has taken
        self.stopping = False
        self.changed = asyncio.Condition()

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def _close(self, trial_id: str, kind: str, payload: Any) -> None:
        if trial_id in self.closed:
            return
        self.inbox[trial_id].append((kind, payload))
        self.closed.add(trial_id)
        if trial_id in self.pending:
            self.pending.remove(trial_id)
        self.running = {s: t for s, t in self.running.items() if t != trial_id}

    async def submit(self, trial_id: str, job: dict[str, Any]) -> None:
        self.jobs[trial_id] = job
        self.closed.discard(trial_id)  # a trial Tune starts again (a resumed sweep)
        if len(self.dead_slots) == self.slots:
            self._close(trial_id, "error", f"every worker group has failed: {self._dead()}")
        else:
            self.pending.append(trial_id)
        await self._notify()

    def _dead(self) -> str:
        return "; ".join(f"slot {s}: {why}" for s, why in sorted(self.dead_slots.items()))

    async def take(self, slot: int, wait_s: Optional[float] = None) -> Optional[dict[str, Any]]:
        """The next trial for ``slot``'s worker group, None when the sweep is over, or
        ``IDLE`` after ``wait_s`` without one (the group's other ranks wait in a collective,
        which would time out if they waited for ever)."""
        held = self.running.pop(slot, None)
        if held is not None and held not in self.closed:
            # The slot's group restarted without its trial ending: a crash not raised by the
            # trial's code (that would have posted an error). Resume it from its checkpoint.
            if self.attempts[held] < MAX_ATTEMPTS:
                self.pending.appendleft(held)
            else:
                self._close(held, "error", f"its worker group died {self.attempts[held]} times")
            await self._notify()
        try:
            async with self.changed:
                await asyncio.wait_for(self.changed.wait_for(lambda: self.pending or self.stopping), wait_s)
        except asyncio.TimeoutError:
            return IDLE
        if self.stopping:
            return None
        trial_id = self.pending.popleft()
        self.running[slot] = trial_id
        self.attempts[trial_id] += 1
        self.taken[slot] += 1
        return {**self.jobs[trial_id], "trial_id": trial_id}

    async def post(self, trial_id: str, kind: str, payload: Any = None) -> bool:
        """A message from the trial's rank 0 (or any rank, for an error); returns whether the
        trial should stop (Tune cancelled it, or it already ended)."""
        if trial_id in self.closed:
            return True
        if kind == "result":
            self.inbox[trial_id].append((kind, payload))
        else:
            self._close(trial_id, kind, payload)
        await self._notify()
        return trial_id in self.closed

    async def fetch(self, trial_id: str) -> list[tuple[str, Any]]:
        """Wait for the trial's next messages."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.inbox[trial_id])
        messages, self.inbox[trial_id] = self.inbox[trial_id], []
        return messages

    async def cancel(self, trial_id: str) -> None:
        self._close(trial_id, "cancelled", None)
        await self._notify()

    async def taken_by(self, slot: int) -> int:
        """How many trials ``slot``'s groups have taken so far: a group that failed without
        taking one failed on its own (an import, a device), not on a trial."""
        return self.taken[slot]

    async def is_stopping(self) -> bool:
        """Whether the sweep is over: a slot whose group ended starts no other."""
        return self.stopping

    async def slot_died(self, slot: int, reason: str) -> None:
        self.dead_slots[slot] = reason
        held = self.running.pop(slot, None)
        if held is not None:
            self._close(held, "error", f"its worker group failed: {reason}")
        if len(self.dead_slots) == self.slots:
            for trial_id in list(self.pending):
                self._close(trial_id, "error", f"every worker group has failed: {self._dead()}")
        await self._notify()

    async def stop(self) -> None:
        """The sweep is over (or interrupted): trials still running stop at their next epoch
        (a resumed sweep continues them from their checkpoints), idle groups end."""
        self.stopping = True
        for trial_id in [*self.running.values(), *self.pending]:
            self._close(trial_id, "cancelled", None)
        await self._notify()
