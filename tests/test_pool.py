"""Multi-worker trials in long-lived DDP worker groups (raysweep.sweep.pool).

The dispatcher's bookkeeping is tested directly on asyncio; one sweep of 2-worker trials shows
the worker group serving trial after trial with DDP, and a diverging trial failing alone."""
from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pandas as pd
import pytest
import torch

from helpers import tiny_space, write_space
from raysweep import search
from raysweep.sweep.dispatcher import IDLE, MAX_ATTEMPTS, TrialDispatcher


def _run(coro):
    return asyncio.run(coro)


def _sweep_args(tmp_path, dense_digits, name: str, **fields) -> list[str]:
    """``raysweep.search`` arguments for a digits sweep of 2-worker trials with ``fields`` set.
    2 x 1 CPU: one worker group exactly fills the 2-CPU test Ray (the trial functions hold no CPU)."""
    fixed = {"dense": str(dense_digits / "final.pt"), "search": "grid", "trials": 1,
             "resources": {"workers_per_trial": 2, "cpus_per_worker": 1.0}}  # fmt: skip
    space = tiny_space(name, **{**fixed, **fields})
    return ["--space", str(write_space(tmp_path, space)), "--storage", str(tmp_path), "-q"]


async def _submit(d: TrialDispatcher, *trial_ids: str) -> None:
    for trial_id in trial_ids:
        await d.submit(trial_id, {"run": {}, "checkpoint_dir": ""})


def test_a_slot_waits_for_a_trial_and_gets_it_whole():
    async def scenario():
        d = TrialDispatcher(slots=1)
        waiting = asyncio.create_task(d.take(0))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        await d.submit("t1", {"run": {"lr": 0.1}, "checkpoint_dir": "/x/t1"})
        job = await asyncio.wait_for(waiting, 1)
        assert job == {"run": {"lr": 0.1}, "checkpoint_dir": "/x/t1", "trial_id": "t1"}
        assert await d.post("t1", "result", {"epoch": 0}) is False
        assert await d.post("t1", "done") is True
        assert await d.fetch("t1") == [("result", {"epoch": 0}), ("done", None)]
        assert await d.post("t1", "result", {"epoch": 1}) is True  # nothing after the end
        assert await d.take(0, wait_s=0.05) == IDLE  # nothing to do yet: the ranks meet and wait again
        await d.stop()
        assert await d.take(0) is None

    _run(scenario())


def test_a_trial_whose_group_dies_under_it_is_resumed_then_failed():
    async def scenario():
        d = TrialDispatcher(slots=1)
        await _submit(d, "t1", "t2")
        for attempt in range(MAX_ATTEMPTS):
            # The slot asks again while holding t1: its group restarted; t1 comes back first.
            assert (await d.take(0))["trial_id"] == "t1", attempt
        assert (await d.take(0))["trial_id"] == "t2"
        messages = await d.fetch("t1")
        assert messages[-1][0] == "error" and f"died {MAX_ATTEMPTS} times" in messages[-1][1]

    _run(scenario())


def test_an_error_or_a_cancel_ends_a_trial_and_frees_its_slot():
    async def scenario():
        d = TrialDispatcher(slots=1)
        await _submit(d, "t1", "t2", "t3")
        assert (await d.take(0))["trial_id"] == "t1"
        await d.post("t1", "error", "rank 1: FloatingPointError: nan")
        assert (await d.take(0))["trial_id"] == "t2"  # t1 is not resumed: its own code failed
        await d.cancel("t2")  # Tune stopped it (ASHA)
        assert await d.post("t2", "result", {"epoch": 3}) is True  # rank 0 learns it must stop
        await d.cancel("t3")  # stopped while still waiting: never handed to a slot
        await _submit(d, "t4")
        assert (await d.take(0))["trial_id"] == "t4"
        await d.stop()  # e.g. Ctrl+C: the running trial stops at its next epoch
        assert await d.post("t4", "result", {"epoch": 0}) is True
        assert await d.take(0) is None
        assert await d.fetch("t1") == [("error", "rank 1: FloatingPointError: nan")]
        assert await d.fetch("t2") == [("cancelled", None)]
        assert await d.fetch("t3") == [("cancelled", None)]
        assert await d.fetch("t4") == [("cancelled", None)]

    _run(scenario())


def test_when_every_group_has_failed_waiting_and_new_trials_fail_at_once():
    async def scenario():
        d = TrialDispatcher(slots=2)
        await _submit(d, "t1", "t2")
        assert (await d.take(0))["trial_id"] == "t1"
        await d.slot_died(0, "RuntimeError: no GPU")
        assert (await d.fetch("t1"))[-1] == ("error", "its worker group failed: RuntimeError: no GPU")
        await d.slot_died(1, "RuntimeError: no GPU")
        assert (await d.fetch("t2"))[-1][0] == "error"
        await _submit(d, "t3")
        assert "every worker group has failed" in (await d.fetch("t3"))[-1][1]

    _run(scenario())


@pytest.mark.ray
def test_two_worker_trials_share_one_ddp_group_and_a_failing_one_fails_alone(ray_local, dense_digits, tmp_path):
    from ray.tune import ExperimentAnalysis

    # Three that train and one that diverges (NaN loss), in whatever order Tune runs them.
    lrs = {"choice": [0.01, 0.02, 0.03, 1.0e12]}
    args = _sweep_args(tmp_path, dense_digits, "pool", epochs=2, lr=lrs, methods={"irregular": {"*": 0.5}})
    before = _live_groups(ray_local)
    assert search.main(args) == 0
    # The failed trial's slot started a new group as the sweep ended: it ended too, and no
    # placement group is left holding the CPUs (one was, in CI, and the next sweep hung on it).
    assert _live_groups(ray_local) <= before

    exp = tmp_path / "pool"
    trials = pd.read_csv(exp / "trials.csv").set_index("trial_id")
    analysis = ExperimentAnalysis(str(exp))
    last = {t.trial_id: t.last_result for t in analysis.trials}
    by_lr = {t.config["lr"]: t.trial_id for t in analysis.trials}
    ok, diverged = [by_lr[0.01], by_lr[0.02], by_lr[0.03]], by_lr[1.0e12]
    assert trials.loc[ok, "status"].tolist() == ["TERMINATED"] * 3
    assert trials.loc[diverged, "status"] == "ERROR"
    assert "FloatingPointError" in trials.loc[diverged, "error"], trials.loc[diverged, "error"]
    # One slot (2 x 1 CPU on 2): its group serves trial after trial. The failed trial's group
    # is replaced, so the three that train split into at most two groups: one served two or more.
    served = sorted(last[t]["slot_trial"] for t in ok)
    assert {last[t]["slot"] for t in ok} == {0} and served[0] == 0 and served[-1] >= 1, served
    for t in ok:
        assert last[t]["world_size"] == 2 and last[t]["rank_weight_spread"] == 0.0
        assert last[t]["epoch"] == 1
        saved = torch.load(trials.loc[t, "checkpoint"], map_location="cpu", weights_only=True)
        assert saved["epoch"] == 1 and saved["metrics"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
        assert trials.loc[t, "sparsity"] == pytest.approx(0.5, abs=1e-3)


def _live_groups(ray, settle_s: float = 1.0) -> set[str]:
    """This job's placement groups that Ray has not removed (after ``settle_s`` for removals in flight)."""
    job = ray.get_runtime_context().get_job_id()

    def live() -> set[str]:
        return {g for g, info in ray.util.placement_group_table().items() if g.endswith(job) and info["state"] != "REMOVED"}

    if live() and settle_s:
        time.sleep(settle_s)
    return live()


@pytest.mark.ray
def test_the_placement_groups_a_cancelled_group_start_leaves_are_removed(ray_local):
    """What ``WorkerPool.stop`` does after cancelling a slot: a group of this job made since
    the pool started and holding nothing goes; one from before, or with an actor in it, stays."""
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from raysweep.sweep.pool import remove_orphan_groups

    class Held:  # defined here: pickled by value (the workers cannot import this file)
        def ping(self) -> int:
            return 1

    older = placement_group([{"CPU": 0.25}])
    ray_local.get(older.ready())
    before = set(ray_local.util.placement_group_table())
    idle, busy = placement_group([{"CPU": 0.25}, {"CPU": 0.25}]), placement_group([{"CPU": 0.25}])
    waiting = placement_group([{"CPU": 64}])  # never fits: PENDING
    ray_local.get([idle.ready(), busy.ready()])
    actor = ray_local.remote(num_cpus=0.25)(Held).options(scheduling_strategy=PlacementGroupSchedulingStrategy(busy)).remote()
    assert ray_local.get(actor.ping.remote()) == 1
    try:
        assert sorted(remove_orphan_groups(before, settle_s=0)) == sorted([idle.id.hex(), waiting.id.hex()])
        states = {g: info["state"] for g, info in ray_local.util.placement_group_table().items()}
        assert states[older.id.hex()] == states[busy.id.hex()] == "CREATED"
        assert states[idle.id.hex()] == states[waiting.id.hex()] == "REMOVED"
        # A cancelled group's workers go a moment after it: the group goes once they have.
        threading.Timer(1.0, ray_local.kill, [actor]).start()
        assert remove_orphan_groups(before, settle_s=30) == [busy.id.hex()]
        assert ray_local.util.placement_group_table()[older.id.hex()]["state"] == "CREATED"
    finally:
        ray_local.kill(actor)
        remove_placement_group(older)


@pytest.mark.ray
def test_a_trial_whose_worker_dies_resumes_in_a_new_group(ray_local, dense_digits, tmp_path):
    from ray.tune import ExperimentAnalysis
    from ray.util.state import list_actors

    args = _sweep_args(tmp_path, dense_digits, "kill", epochs=6, lr=0.01, methods={"irregular": {"*": 0.6}})
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("rc", search.main(args)))
    runner.start()
    exp, killed = tmp_path / "kill", None
    deadline = time.time() + 300
    while time.time() < deadline and killed is None and runner.is_alive():
        if list(exp.glob("trials/*/checkpoint_epoch*")):
            alive = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
            actors = list_actors(address=ray_local.get_runtime_context().gcs_address, filters=alive)
            if actors:
                os.kill(actors[-1].pid, signal.SIGKILL)
                killed = actors[-1].pid
        time.sleep(0.2)
    runner.join(timeout=400)
    assert killed is not None, "never saw a worker to kill"
    assert outcome.get("rc") == 0

    trials = pd.read_csv(exp / "trials.csv")
    assert trials["status"].tolist() == ["TERMINATED"], trials[["status", "error"]].to_dict("records")
    (trial,) = ExperimentAnalysis(str(exp)).trials
    # Finished in a second group (its first trial there), continuing from its checkpoint: every
    # epoch trained once, in order, in the history the checkpoint carries.
    assert trial.last_result["slot_trial"] == 0 and trial.last_result["epoch"] == 5
    saved = torch.load(trials["checkpoint"].iloc[0], map_location="cpu", weights_only=True)
    assert [m["epoch"] for m in saved["history"]] == list(range(6))
    assert saved["metrics"]["sparsity"] == pytest.approx(0.6, abs=1e-3)


@pytest.mark.ray
def test_the_trainer_executor_gives_each_trial_a_torchtrainer_of_its_own(ray_local, dense_digits, tmp_path):
    from ray.tune import ExperimentAnalysis

    args = _sweep_args(tmp_path, dense_digits, "own", epochs=1, lr=0.01, methods={"filter": {"features.*": 0.25}},
                       resources={"workers_per_trial": 2, "cpus_per_worker": 1.0, "executor": "trainer"})  # fmt: skip
    assert search.main(args) == 0
    exp = tmp_path / "own"
    trials = pd.read_csv(exp / "trials.csv")
    assert trials["status"].tolist() == ["TERMINATED"]
    (trial,) = ExperimentAnalysis(str(exp)).trials
    result = trial.last_result
    assert result["world_size"] == 2 and result["rank_weight_spread"] == 0.0 and "slot" not in result
    assert not (exp / "pool").exists()
    # Ray Train's own checkpoint of the trial's run, where the report looks for it.
    assert trials["checkpoint"].iloc[0].endswith(f"trials/{trial.trial_id}/checkpoint_epoch0000/checkpoint.pt")


@pytest.mark.ray
def test_a_group_that_fails_before_taking_a_trial_fails_the_waiting_trials(ray_local, tmp_path):
    """An import that fails in every worker ends the slot after two groups, and the trial
    waiting for it fails with that import's error within a minute."""
    import pickle
    from types import SimpleNamespace

    import ray

    from raysweep.config import RunConfig
    from raysweep.sweep.pool import PoolCallback, TrialFailed, WorkerPool, run_pool_trial

    base = RunConfig(workers=2, cpus_per_worker=1.0)
    pool = WorkerPool(base, slots=1, exp_dir=tmp_path, budget=10, preload=["raysweep_no_such_module"])
    pool.start()
    try:
        # Tune pickles its callbacks with the experiment: this one holds only the dispatcher's name.
        callback = pickle.loads(pickle.dumps(PoolCallback(pool.name)))
        callback.on_trial_complete(0, [], SimpleNamespace(trial_id="stopped"))
        assert ray.get(pool.dispatcher.fetch.remote("stopped")) == [("cancelled", None)]
        start = time.time()
        with pytest.raises(TrialFailed, match="No module named 'raysweep_no_such_module'"):
            run_pool_trial(pool.dispatcher, "waiting", base, str(tmp_path / "waiting"))
        assert time.time() - start < 60
    finally:
        pool.stop()


@pytest.mark.ray
def test_a_pool_stopped_while_its_group_starts_leaves_no_placement_group(ray_local, tmp_path):
    """Stopped before its slot's group has started (a group restarted as the sweep ends, as in
    CI): the slot is cancelled mid-start and the group's placement group goes with it, so the
    whole Ray is free for the next sweep."""
    from ray.util.placement_group import placement_group, remove_placement_group

    from raysweep.config import RunConfig
    from raysweep.sweep.pool import WorkerPool

    before = _live_groups(ray_local)
    pool = WorkerPool(RunConfig(workers=2, cpus_per_worker=1.0), slots=1, exp_dir=tmp_path, budget=1, preload=[])
    pool.start()
    deadline = time.time() + 60
    while time.time() < deadline and _live_groups(ray_local, settle_s=0) <= before:  # the group's start is under way
        time.sleep(0.05)
    assert _live_groups(ray_local, settle_s=0) - before, "the slot never made its group's placement group"
    pool.stop(timeout_s=0)
    assert _live_groups(ray_local) <= before
    whole = placement_group([{"CPU": 1.0}, {"CPU": 1.0}])  # the test Ray's two CPUs
    try:
        ray_local.get(whole.ready(), timeout=30)
    finally:
        remove_placement_group(whole)
