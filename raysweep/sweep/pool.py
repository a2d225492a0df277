"""The ``pool`` executor: multi-worker sweep trials served by long-lived DDP worker groups.

A fresh ``TorchTrainer`` per trial costs ~25 s on a 2-core machine before its first batch:
a controller actor, a placement group, worker processes that import torch, a process group.
Instead the sweep starts one ``TorchTrainer`` per concurrent trial slot and keeps it for the
whole sweep: its workers take trial after trial from the dispatcher (raysweep.sweep.dispatcher)
and run the same training loop with DDP over the slot's process group, so a trial costs only
its own model set-up. The Tune trial itself stays a light function that hands its config to
the dispatcher and relays the slot's per-epoch reports to Tune.

Failures stay per trial: an exception in any rank posts the trial's error and re-raises, and the
slot starts a new group, which takes the next trial. A group that dies on its own (a node lost)
hands its trial back to be resumed from the trial's own checkpoint. A group that fails twice
without taking a trial (an import or a device that fails in every worker) ends its slot, and
when every slot has ended the waiting trials fail with that error. Restarts are bounded by the
trials the sweep plans. Tune stopping a trial (ASHA) reaches the slot through ``PoolCallback``;
the ranks stop together at the next epoch boundary.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import ray
import torch
import torch.distributed
from ray.tune import Callback

from raysweep import ray_env, storage
from raysweep.config import RunConfig
from raysweep.sweep.dispatcher import IDLE, IDLE_WAIT_S, MAX_ATTEMPTS, TrialDispatcher
from raysweep.sweep.executors import Executor, SweepContext, register_executor, trial_folder
from raysweep.trial.checkpoint import Checkpoint, CheckpointFolder, StorageError
from raysweep.trial.logs import trial_log
from raysweep.trial.loop import run_loop
from raysweep.trial.sessions import TrainSession

log = logging.getLogger("raysweep.pool")

# A group that fails this many times in a row without taking a trial ends its slot.
FAILURES_WITHOUT_A_TRIAL = 2
# Group restarts a slot may use beyond one per planned trial (each trial's own error costs one).
SPARE_RESTARTS = MAX_ATTEMPTS
# How long the pool's stop waits for its slots before cancelling them: idle groups end in a
# second or two, a group still starting (restarted after its slot's last trial failed) once
# started; a trial mid-epoch would keep a Ctrl-C waiting until its epoch ends.
STOP_WAIT_S = 30.0


class TrialFailed(RuntimeError):
    """Raised in the Tune trial with the error its worker group posted."""


class TrialCancelled(Exception):
    """Raised in every rank when Tune has stopped the trial they are training."""


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
        self.checkpoints = CheckpointFolder(job["checkpoint_dir"])
        self.extra = {"slot": job["slot"], "slot_trial": served}

    def resume_state(self) -> Optional[Checkpoint]:
        # Every rank reads it from the shared storage: nothing was written since the last epoch.
        return self.checkpoints.latest()

    def report(self, metrics: dict[str, Any], state: Optional[Checkpoint], epoch: int) -> None:
        stop = False
        if self.world_rank == 0:
            stop = ray.get(self.dispatcher.post.remote(self.trial_id, "result", {**metrics, **self.extra}))
            # Saved only for an epoch Tune takes: a trial it already stopped keeps, as its last
            # checkpoint, the epoch of its last reported result.
            if state is not None and not stop:
                self.checkpoints.save(state, epoch)
        if _broadcast(stop, self.device()):
            raise TrialCancelled(self.trial_id)


def peer_lost(exc: BaseException) -> bool:
    """A collective failed because another rank went away: the group's failure, not the trial's.

    NCCL raises ``torch.distributed.DistError``; gloo a plain RuntimeError from its TCP
    transport (torch 2.14: "[.../gloo/transport/tcp/pair.cc:...] Connection closed by peer"),
    so for gloo its message is the only sign."""
    return isinstance(exc, torch.distributed.DistError) or "gloo/transport/" in str(exc)


def serve(config: dict[str, Any]) -> None:
    """A slot's ``train_loop_per_worker``: trial after trial until the dispatcher stops."""
    import ray.train
    import ray.train.torch

    ray_env.quiet_report_lines()
    for module in config.get("preload", ()):  # what every trial imports: fail here, not in a trial
        importlib.import_module(module)
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
            with trial_log(job["checkpoint_dir"]) if rank == 0 else contextlib.nullcontext():
                run_loop({"run": job["run"], "run_dir": ""}, PoolSession(dispatcher, {**job, "slot": slot}, served))
        except TrialCancelled:
            pass
        except BaseException as exc:
            # Other ranks may be waiting in a collective: re-raise so Ray Train replaces the group.
            # A collective that failed because a peer died is the group's failure, not the
            # trial's: the dispatcher then resumes the trial in the new group.
            if not peer_lost(exc):
                text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                error = {"text": f"rank {rank}: {text}", "storage": exc.__reduce__()[1] if isinstance(exc, StorageError) else None}
                ray.get(dispatcher.post.remote(job["trial_id"], "error", error))
            raise
        else:
            if rank == 0:
                ray.get(dispatcher.post.remote(job["trial_id"], "done"))
        served += 1


@ray.remote(num_cpus=0)
def _run_slot(cfg_dict: dict[str, Any], storage: str, slot: int, dispatcher, budget: int, preload: list[str]) -> None:
    """One slot: a ``TorchTrainer`` whose workers serve trials; a new one after each failure,
    within ``budget`` restarts, until a group fails twice without taking a trial."""
    from raysweep.trial.runner import build_trainer

    cfg = RunConfig.from_dict(cfg_dict)
    cfg.max_failures = 0  # restarts are decided here, where it is known whether a trial was taken
    config = {"dispatcher": dispatcher, "slot": slot, "preload": preload}
    restarts = idle_failures = 0
    while True:
        taken = ray.get(dispatcher.taken_by.remote(slot))
        trainer = build_trainer(cfg, storage, f"slot{slot}-{restarts}", loop=serve, loop_config=config)
        try:
            trainer.fit()
            reason = "it ended"
            break
        except Exception as exc:  # noqa: BLE001 - whatever it was, its trials must hear of it
            reason = f"{type(exc).__name__}: {_last_line(exc)}"
        if ray.get(dispatcher.is_stopping.remote()):
            break  # the sweep is over: no new group
        idle_failures = 0 if ray.get(dispatcher.taken_by.remote(slot)) > taken else idle_failures + 1
        if idle_failures >= FAILURES_WITHOUT_A_TRIAL or restarts >= budget:
            log.error("worker group of slot %d failed: %s", slot, reason)
            break
        restarts += 1
    ray.get(dispatcher.slot_died.remote(slot, reason))


def _last_line(exc: BaseException) -> str:
    """The root cause's line of a Ray Train failure (its message ends with the worker's error)."""
    return (str(exc).strip().splitlines() or [""])[-1]


def dispatcher_name(exp_dir: Path) -> str:
    """The dispatcher's actor name: found again by ``PoolCallback`` after a resume."""
    return "raysweep-dispatcher-" + hashlib.sha1(str(exp_dir).encode()).hexdigest()[:16]


class WorkerPool:
    """The sweep's slots: ``start`` before ``Tuner.fit``, ``stop`` after it."""

    def __init__(self, base: RunConfig, slots: int, exp_dir: Path, budget: int, preload: list[str]) -> None:
        self.base, self.slots, self.budget, self.preload = base, slots, budget, preload
        self.name = dispatcher_name(exp_dir)
        # A fresh Ray Train run name each time the sweep (re)starts: never a resumed slot.
        self.storage = storage.join(exp_dir, "pool", time.strftime("%Y%m%d-%H%M%S"))
        self.dispatcher = None
        self.tasks: list = []
        self.groups_before: set[str] = set()

    def start(self) -> None:
        self.groups_before = set(ray.util.placement_group_table())
        self.dispatcher = Dispatcher.options(name=self.name).remote(self.slots)
        self.tasks = [
            _run_slot.remote(self.base.to_dict(), str(self.storage), slot, self.dispatcher, self.budget, self.preload)
            for slot in range(self.slots)
        ]
        log.info("%d worker group(s) of %d serve the multi-worker trials", self.slots, self.base.workers)

    def stop(self, timeout_s: float = STOP_WAIT_S) -> None:
        """Idle groups end within a second or two, and one still starting once it has started.
        A slot still running after ``timeout_s`` is cancelled with its Ray Train run, and the
        placement group of a group start that the cancel cut short is removed."""
        if self.dispatcher is None:
            return
        ray.get(self.dispatcher.stop.remote())
        _, hung = ray.wait(self.tasks, num_returns=len(self.tasks), timeout=timeout_s)
        for task in hung:
            ray.cancel(task, force=True)
        if hung:
            log.warning("%d worker group(s) did not end within %.0f s: cancelled", len(hung), timeout_s)
            ray.wait(hung, num_returns=len(hung), timeout=10)
            remove_orphan_groups(self.groups_before)
        ray.kill(self.dispatcher)
        self.dispatcher = None


def remove_orphan_groups(before: set[str], settle_s: float = 10.0) -> list[str]:
    """Remove the placement groups this job made since ``before``, once nothing runs in them.

    Ray Train hands a worker group's placement group to its cleaner only once the group has
    started, so a controller cancelled mid-start leaves one holding its CPUs until the job
    ends: a notebook's next sweep would wait for them for ever. Called once the sweep's trials
    and slots are over, when no group of this job should be left; the cancelled group's
    workers may take up to ``settle_s`` to go."""
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    job, deadline = ray.get_runtime_context().get_job_id(), time.monotonic() + settle_s
    removed: list[str] = []
    while True:
        busy = []
        total, free = ray.cluster_resources(), ray.available_resources()
        for group_id, info in ray.util.placement_group_table().items():  # an id ends with its job's
            if group_id in before or not group_id.endswith(job) or info["state"] not in ("PENDING", "CREATED", "RESCHEDULING"):
                continue
            held = {k: v for k, v in total.items() if k.endswith(f"_group_{group_id}") and not k.startswith("bundle_")}
            if any(free.get(k, 0.0) < v for k, v in held.items()):
                busy.append(group_id)  # something still runs in it
                continue
            remove_placement_group(PlacementGroup(ray._raylet.PlacementGroupID.from_hex(group_id)))
            removed.append(group_id)
        if not busy or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if removed:
        log.warning("removed %d placement group(s) left by cancelled worker group(s): %s", len(removed), ", ".join(removed))
    if busy:
        log.warning("placement group(s) still in use %.0f s after their worker groups were cancelled: %s", settle_s, ", ".join(busy))
    return removed


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
                    raise _trial_error(payload)
                else:  # done, cancelled
                    return
    finally:
        dispatcher.cancel.remote(trial_id)  # a no-op once it ended; stops the slot if Tune stopped us


def _trial_error(payload: Any) -> Exception:
    """The exception a pooled trial ends with: the storage's failure keeps its type."""
    if isinstance(payload, dict):
        return StorageError(*payload["storage"]) if payload.get("storage") else TrialFailed(payload["text"])
    return TrialFailed(payload)  # the dispatcher's own word: a group that failed


class PoolCallback(Callback):
    """A trial Tune ends (ASHA's stop, an error) stops training in its slot.

    Holds only the dispatcher's name: Tune pickles its callbacks with the experiment, and a
    resumed sweep finds its new dispatcher under the same name."""

    def __init__(self, dispatcher_name: str) -> None:
        self.dispatcher_name = dispatcher_name

    def _cancel(self, trial) -> None:
        try:
            dispatcher = ray.get_actor(self.dispatcher_name)
        except ValueError:  # the pool has stopped
            return
        dispatcher.cancel.remote(trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._cancel(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._cancel(trial)


@register_executor("pool")
class PoolExecutor(Executor):
    """Multi-worker trials in the sweep's long-lived worker groups (see the module doc)."""

    pool: Optional[WorkerPool] = None

    def start(self, base: RunConfig, slots: int, exp_dir: Path, trials_planned: Optional[int]) -> Any:
        budget = (trials_planned if trials_planned is not None else 100) + SPARE_RESTARTS
        self.pool = WorkerPool(base, slots, exp_dir, budget, preload_modules(base))
        self.pool.start()
        return self.pool.dispatcher

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.stop()

    def callbacks(self) -> list:
        return [PoolCallback(self.pool.name)] if self.pool is not None else []

    def describe(self, slots: int) -> str:
        return f"{super().describe(slots)}, in {slots} long-lived worker group(s)"

    @staticmethod
    def run(context: SweepContext, cfg: RunConfig, trial_id: str) -> None:
        run_pool_trial(context.dispatcher, trial_id, cfg, str(trial_folder(context, trial_id)))


def preload_modules(base: RunConfig) -> list[str]:
    """Modules every trial of the sweep imports: the loop's own, and a model's or a dataset's
    given by import path (one the workers cannot import fails their group at its start)."""
    from raysweep.models import module_of

    return ["raysweep.trial.loop", *filter(None, (module_of(base.model), module_of(base.dataset)))]
