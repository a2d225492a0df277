"""The space's ``tracking`` section, and what is checked before Ray starts. The runs a tracked
sweep leaves in MLflow and its TensorBoard event files are read back in tests/test_s3.py, whose
sweep is tracked (skipped only where mlflow / tensorboardX is not installed)."""
from __future__ import annotations

import pytest

from raysweep import search
from raysweep.results.collect import save_sweep_info
from raysweep.space import SpaceError, load_space
from raysweep.sweep import tracking
from raysweep.sweep.inputs import resume_space, sweep_info

pytestmark = pytest.mark.usefixtures("no_ray")


def test_the_tracking_section_in_the_space_and_through_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = load_space(None, ["tracking.mlflow.tracking_uri=mlruns", "tracking.mlflow.experiment=pruning", "tracking.tensorboard=true"])
    assert space.tracking.mlflow == {"tracking_uri": (tmp_path / "mlruns").as_uri(), "experiment": "pruning"}  # a folder: absolute
    assert space.tracking.tensorboard and tracking.enabled(space) == {"mlflow": space.tracking.mlflow, "tensorboard": True}
    served = load_space({"trials": 0, "points": [{"method": "irregular", "ratios": {"*": 0.5}}],
                         "tracking": {"mlflow": {"tracking_uri": "http://127.0.0.1:5000"}}})  # fmt: skip
    assert served.tracking.mlflow == {"tracking_uri": "http://127.0.0.1:5000"} and not served.tracking.tensorboard
    assert load_space(None, ["tracking.mlflow=true"]).tracking.mlflow == {}  # MLflow's own defaults
    assert tracking.enabled(load_space(None)) == {}
    with pytest.raises(SpaceError) as err:
        load_space(None, ["tracking.wandb=true", "tracking.tensorboard=3", "tracking.mlflow=[1]"])
    assert [p.split(":")[0] for p in err.value.problems] == ["tracking", "tracking.mlflow", "tracking.tensorboard"]


def test_a_tracker_whose_package_is_missing_is_one_message_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tracking.MLflow, "module", "raysweep_no_such_module")
    args = ["--set", "tracking.mlflow.tracking_uri=mlruns", "--storage", str(tmp_path / "s"), "--name", "t"]
    assert search.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "tracking.mlflow needs raysweep_no_such_module" in err and "raysweep[mlflow]" in err
    assert not (tmp_path / "s").exists()


def test_a_resume_may_change_where_it_is_tracked_but_not_what_it_searches(tmp_path):
    exp = tmp_path / "lw"
    space = load_space("digits_layerwise", ["trials=3"])
    save_sweep_info(exp, sweep_info("lw", "digits_layerwise", ["trials=3"], space))
    resumed = resume_space(exp, None, ["tracking.tensorboard=true"])
    assert resumed.tracking.tensorboard and resumed.trials == 3


@pytest.mark.skipif(not tracking.importlib.util.find_spec("mlflow"), reason="mlflow is not installed")
def test_a_file_store_cut_short_by_a_killed_driver_is_repaired_before_the_sweep_resumes(tmp_path, monkeypatch):
    """MLflow's file store writes in place: a driver SIGKILLed mid-write leaves an empty meta.yaml,
    after which every search of the experiment fails, and a resume with it (seen in CI)."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = tmp_path / "mlruns"
    client = MlflowClient(tracking_uri=store.as_uri())
    experiment = client.create_experiment("sweep")
    whole, emptied, cut, live = (client.create_run(experiment).info.run_id for _ in range(4))
    client.log_metric(whole, "accuracy", 0.5, step=0)
    client.log_metric(whole, "accuracy", 0.75, step=1)
    client.log_metric(live, "accuracy", 0.25, step=0)
    (store / experiment / emptied / "meta.yaml").write_text("")
    meta = store / experiment / cut / "meta.yaml"
    meta.write_text(meta.read_text()[:-12])  # a sorted dump cut in its last key, user_id
    metric = store / experiment / whole / "metrics" / "accuracy"
    metric.write_bytes(metric.read_bytes() + b"17962")  # a third line, cut short
    written = store / experiment / live / "metrics" / "accuracy"
    line = written.read_bytes()
    written.write_bytes(line + line[:9])  # another sweep on this store, in the middle of a write
    with pytest.raises(Exception):
        client.search_runs([experiment])
    # ... which it finishes while the repair waits to look again
    monkeypatch.setattr(tracking.time, "sleep", lambda s: written.write_bytes(line + line.replace(b" 0.25 0", b" 0.5 1")))

    changed = tracking.repair_file_store(store / experiment)

    # the two runs without a whole meta get it back, rebuilt from the whole run's: a resumed trial finds its run
    assert sorted(changed) == sorted([store / experiment / emptied / "meta.yaml", meta, metric])
    assert sorted(r.info.run_id for r in client.search_runs([experiment])) == sorted([whole, emptied, cut, live])
    assert all(client.get_run(r).info.status == "RUNNING" for r in (emptied, cut))
    assert [m.value for m in client.get_metric_history(whole, "accuracy")] == [0.5, 0.75]
    assert [m.value for m in client.get_metric_history(live, "accuracy")] == [0.25, 0.5]  # left as its writer wrote it
    assert tracking.repair_file_store(store / experiment) == []  # a whole store is left alone
    # an experiment with no whole run to rebuild from: its broken run is moved aside
    lone = client.create_experiment("lone")
    broken = client.create_run(lone).info.run_id
    (store / lone / broken / "meta.yaml").write_text("")
    assert tracking.repair_file_store(store / lone) == [store / lone / ".raysweep-unreadable" / broken]
    assert client.search_runs([lone]) == []


class _Trial:
    """What the callback reads of Tune's Trial (hashed by identity, as Tune's is)."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id, self.config = trial_id, {"method": "nm"}


@pytest.mark.skipif(not tracking.importlib.util.find_spec("mlflow"), reason="mlflow is not installed")
def test_a_resumed_trial_gets_the_epochs_its_run_lacks_from_its_checkpoint(tmp_path, monkeypatch):
    """A driver killed after a trial saved epoch 1's checkpoint but before it logged epoch 1
    (seen in CI): the resumed trial reports from epoch 2 on, and its run still gets every epoch."""
    import torch
    from mlflow.tracking import MlflowClient

    from raysweep.trial.checkpoint import Checkpoint, CheckpointFolder

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store, trials = (tmp_path / "mlruns").as_uri(), tmp_path / "exp" / "trials"
    history = [{"epoch": e, "accuracy": 0.5 + e / 10, "method": "nm"} for e in range(3)]

    def driver() -> tracking._TrialRuns:
        callback = tracking._TrialRuns(store, experiment_name="sweep", trials_dir=trials,
                                       tags={tracking.PARENT_TAG: "sweep-run", tracking.SWEEP_TAG: "exp"})  # fmt: skip
        callback.setup()
        return callback

    first, resumed, fresh = _Trial("t1"), _Trial("t1"), _Trial("t2")
    killed = driver()
    killed.log_trial_start(first)
    killed.log_trial_start(fresh)
    killed.log_trial_result(1, first, {**history[0], "training_iteration": 1})
    killed.log_trial_result(1, fresh, {**history[0], "training_iteration": 1})  # no checkpoint: none is read
    CheckpointFolder(trials / "t1").save(Checkpoint(model={"w": torch.zeros(1)}, epoch=1, history=history[:2]), 1)
    # ... killed here; the resumed trial saves epoch 2 and reports it
    CheckpointFolder(trials / "t1").save(Checkpoint(model={"w": torch.zeros(1)}, epoch=2, history=history), 2)
    again = driver()
    again.log_trial_start(resumed)
    again.log_trial_result(1, resumed, {**history[2], "training_iteration": 1})
    again.log_trial_result(2, resumed, {**history[2], "training_iteration": 2})  # only a first result is looked at

    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("sweep").experiment_id], filter_string="tags.`raysweep.trial_id` = 't1'")
    logged = client.get_metric_history(run.info.run_id, "accuracy")
    assert sorted((m.step, m.value) for m in logged) == [(1, 0.5), (1, 0.7), (2, 0.6), (2, 0.7)]
    assert sorted({m.value for m in client.get_metric_history(run.info.run_id, "epoch")}) == [0.0, 1.0, 2.0]
