"""Multi-worker sweep trials served by long-lived DDP worker groups (issue #6).

A fresh ``TorchTrainer`` per trial costs ~25 s on a 2-core machine before its first batch:
a controller actor, a placement group, worker processes that import torch, a process group.
Instead the sweep starts one ``TorchTrainer`` per concurrent trial slot and keeps it for the
whole sweep: its workers take trial after trial from a ``Dispatcher`` actor and run the same
training loop (``raysweep.loop.run_loop``) with DDP over the slot's process group, so a trial
costs only its own model set-up. The Tune trial itself stays a light function that hands its
config to the dispatcher and relays the slot's per-epoch reports to Tune.

Failures stay per trial: an exception in any rank posts the trial's error and re-raises, so Ray
Train tears the group down (no rank is left waiting in a collective) and restarts it, and the
new group takes the next trial. A group that dies on its own (a node lost) hands its trial back
to be resumed from the trial's own checkpoint. Tune stopping a trial (ASHA) reaches the slot
through ``PoolCallback``; the ranks stop together at the next epoch boundary.

``RAYSWEEP_TRIAL_POOL=0`` gives every multi-worker trial its own ``TorchTrainer`` instead.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import ray
import torch
import torch.distributed
from ray.tune import Callback

from raysweep.config import RunConfig
from raysweep.loop import quiet_report_lines, run_loop
from raysweep.session import TrainSession, TrialCheckpoints

log = logging.getLogger("raysweep.pool")

# A trial whose worker group dies under it (not by its own exception) is resumed this often.
MAX_ATTEMPTS = 3
# An idle group's ranks meet this often (s), well inside the process group's collective timeout.
IDLE_WAIT_S = 60.0
IDLE = {"idle": True}


def pool_enabled() -> bool:
    return os.environ.get("RAYSWEEP_TRIAL_POOL", "1") != "0"


class TrialFailed(RuntimeError):
    """Raised in the Tune trial with the error its worker group posted."""


class TrialCancelled(Exception):
    """Raised in every rank when Tune has stopped the trial they are training."""


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


Dispatcher = ray.remote(num_cpus=0)(TrialDispatcher)


def _broadcast(obj: Any, device: torch.device) -> Any:
    """Rank 0's ``obj`` on every rank (the slot's process group)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=device)
    return box[0]


class PoolSession(TrainSession):
    """One rank of a slot's worker group, training one trial: Ray Train's device, DDP wrap and
    loader as any ``TrainSession``; the trial's checkpoints and reports go through the dispatcher."""

    def __init__(self, dispatcher, job: dict[str, Any], served: int) -> None:
        super().__init__()
        self.dispatcher, self.trial_id = dispatcher, job["trial_id"]
        self.checkpoints = TrialCheckpoints(Path(job["checkpoint_dir"]))
        self.extra = {"slot": job["slot"], "slot_trial": served}

    def resume_payload(self) -> Optional[dict[str, Any]]:
        # Every rank reads it from the shared storage: nothing was written since the last epoch.
        return self.checkpoints.latest()

    def report(self, metrics: dict[str, Any], payload: Optional[dict[str, Any]], epoch: int) -> None:
        stop = False
        if self.world_rank == 0:
            stop = ray.get(self.dispatcher.post.remote(self.trial_id, "result", {**metrics, **self.extra}))
            # Saved only for an epoch Tune takes: a trial it already stopped keeps, as its last
            # checkpoint, the epoch of its last reported result.
            if payload is not None and not stop:
                self.checkpoints.save(payload, epoch)
        if _broadcast(stop, self.device()):
            raise TrialCancelled(self.trial_id)


def _peer_lost(exc: BaseException) -> bool:
    """A collective failed because another rank went away (NCCL raises ``DistError``s; gloo a
    plain RuntimeError from its TCP transport, "Connection reset by peer")."""
    return isinstance(exc, torch.distributed.DistError) or "gloo/transport/" in str(exc)


def serve(config: dict[str, Any]) -> None:
    """A slot's ``train_loop_per_worker``: trial after trial until the dispatcher stops."""
    import ray.train
    import ray.train.torch

    quiet_report_lines()
    dispatcher, slot = config["dispatcher"], config["slot"]
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    served = 0
    while True:
        job = ray.get(dispatcher.take.remote(slot, IDLE_WAIT_S)) if rank == 0 else None
        job = _broadcast(job, device)
        if job is None:
            return
        if job == IDLE:
            continue
        try:
            run_loop({"run": job["run"], "run_dir": ""}, PoolSession(dispatcher, {**job, "slot": slot}, served))
        except TrialCancelled:
            pass
        except BaseException as exc:
            # Other ranks may be waiting in a collective: re-raise so Ray Train replaces the group.
            # A collective that failed because a peer died is the group's failure, not the
            # trial's: the dispatcher then resumes the trial in the new group.
            if not _peer_lost(exc):
                text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                ray.get(dispatcher.post.remote(job["trial_id"], "error", f"rank {rank}: {text}"))
            raise
        else:
            if rank == 0:
                ray.get(dispatcher.post.remote(job["trial_id"], "done"))
        served += 1


@ray.remote(num_cpus=0)
def _run_slot(cfg_dict: dict[str, Any], storage: str, slot: int, dispatcher) -> None:
    from raysweep.engine import build_trainer

    cfg = RunConfig.from_dict(cfg_dict)
    # Each trial's own exception restarts the group once and ends that trial; a group dying
    # under a trial resumes it at most MAX_ATTEMPTS times. So restarts are bounded by trials.
    cfg.max_failures = -1
    trainer = build_trainer(cfg, storage, f"slot{slot}", loop=serve, loop_config={"dispatcher": dispatcher, "slot": slot})
    try:
        trainer.fit()
        reason = "it ended"
    except Exception as exc:  # noqa: BLE001 - whatever it was, its trials must hear of it
        reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[-1]}"
        log.error("worker group of slot %d failed: %s", slot, reason)
    ray.get(dispatcher.slot_died.remote(slot, reason))


class WorkerPool:
    """The sweep's slots: ``start`` before ``Tuner.fit``, ``stop`` after it."""

    active: Optional["WorkerPool"] = None  # the driver's running pool, for PoolCallback

    def __init__(self, base: RunConfig, slots: int, storage: Path) -> None:
        self.base, self.slots = base, slots
        # A fresh Ray Train run name each time the sweep (re)starts: never a resumed slot.
        self.storage = storage / "pool" / time.strftime("%Y%m%d-%H%M%S")
        self.dispatcher = None
        self.tasks: list = []

    def start(self) -> None:
        self.dispatcher = Dispatcher.remote(self.slots)
        self.tasks = [
            _run_slot.remote(self.base.to_dict(), str(self.storage), slot, self.dispatcher)
            for slot in range(self.slots)
        ]
        WorkerPool.active = self
        log.info("%d worker group(s) of %d serve the multi-worker trials", self.slots, self.base.workers)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Idle groups end within a second or two; one still restarting (after its last trial
        failed) is cancelled, with its Ray Train run, once ``timeout_s`` has passed."""
        if self.dispatcher is None:
            return
        ray.get(self.dispatcher.stop.remote())
        _, hung = ray.wait(self.tasks, num_returns=len(self.tasks), timeout=timeout_s)
        for task in hung:
            ray.cancel(task, force=True)
        ray.kill(self.dispatcher)
        self.dispatcher = None
        WorkerPool.active = None


def run_pool_trial(dispatcher, trial_id: str, cfg: RunConfig, checkpoint_dir: str) -> None:
    """The Tune side of a pooled trial: hand it over, relay its reports, end as it ends."""
    import ray.tune

    ray.get(dispatcher.submit.remote(trial_id, {"run": cfg.to_dict(), "checkpoint_dir": checkpoint_dir}))
    try:
        while True:
            for kind, payload in ray.get(dispatcher.fetch.remote(trial_id)):
                if kind == "result":
                    ray.tune.report(payload)
                elif kind == "error":
                    raise TrialFailed(payload)
                else:  # done, cancelled
                    return
    finally:
        dispatcher.cancel.remote(trial_id)  # a no-op once it ended; stops the slot if Tune stopped us


class PoolCallback(Callback):
    """A trial Tune ends (ASHA's stop, an error) stops training in its slot.

    Holds nothing itself: Tune pickles its callbacks with the experiment, and a resumed sweep
    has a new pool (``WorkerPool.active``, in the driver where callbacks run)."""

    def _cancel(self, trial) -> None:
        pool = WorkerPool.active
        if pool is not None and pool.dispatcher is not None:
            pool.dispatcher.cancel.remote(trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._cancel(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._cancel(trial)
