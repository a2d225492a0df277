"""The sweep in the experiment trackers people already use, turned on by the space's ``tracking``
section and built on Ray Tune's own logger callbacks:

* ``mlflow`` -- one MLflow run per trial (its config as parameters, every epoch's metrics,
  Tune's ``MLflowLoggerCallback``), nested under one parent run for the sweep that receives the
  front and the report files as artifacts once the reports are written. A resumed sweep finds
  its parent run and its trials' runs again (tags ``raysweep.sweep`` / ``raysweep.trial_id``).
* ``tensorboard`` -- TensorBoard event files in each trial's folder of the experiment (Tune's
  ``TBXLoggerCallback``); ``tensorboard --logdir <storage>/<name>`` shows them.

Trackers register by name in ``TRACKERS``. Tracking never stops a sweep: a tracker that fails
while trials run logs a warning and the sweep goes on.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlparse
from urllib.request import url2pathname

from ray.air.integrations.mlflow import MLflowLoggerCallback  # imports mlflow only when one is made

from raysweep import storage
from raysweep.errors import RunInputError, first_line
from raysweep.space import SearchSpace
from raysweep.trial.checkpoint import CheckpointFolder

log = logging.getLogger("raysweep.tracking")

SWEEP_TAG, TRIAL_TAG, PARENT_TAG = "raysweep.sweep", "raysweep.trial_id", "mlflow.parentRunId"

TRACKERS: dict[str, type["Tracker"]] = {}


def register_tracker(name: str) -> Callable[[type["Tracker"]], type["Tracker"]]:
    def deco(cls: type[Tracker]) -> type[Tracker]:
        cls.name = name
        TRACKERS[name] = cls
        return cls

    return deco


class Tracker:
    """One tracker of one sweep: checked before Ray, started before the trials, Tune callbacks
    while they run, finished with the sweep's report files."""

    name = ""
    module = ""  # what must be importable
    extra = ""  # the pip extra that installs it

    def __init__(self, settings: Any, sweep: str, exp_dir: storage.Location) -> None:
        self.settings, self.sweep, self.exp_dir = settings, sweep, exp_dir

    @classmethod
    def check(cls) -> None:
        if importlib.util.find_spec(cls.module) is None:
            raise RunInputError(f"tracking.{cls.name} needs {cls.module}, which is not installed: pip install 'raysweep[{cls.extra}]'")

    def start(self) -> None:
        """Before the trials; a failure here is bad input (exit 2)."""

    def callbacks(self) -> list:
        return []

    def finish(self, paths: dict[str, storage.Location], summary: dict[str, Any]) -> None:
        """With the sweep's report files, once they are written."""


def enabled(space: SearchSpace) -> dict[str, Any]:
    """Tracker name -> its settings, for the trackers the space turns on."""
    tracking = space.tracking
    on = {"mlflow": tracking.mlflow, "tensorboard": tracking.tensorboard or None}
    return {k: v for k, v in on.items() if v is not None}


def check_tracking(space: SearchSpace) -> None:
    """Before Ray starts: every tracker the space turns on can be imported."""
    for name in enabled(space):
        TRACKERS[name].check()


def start_tracking(space: SearchSpace, exp_dir: storage.Location) -> list[Tracker]:
    trackers = []
    for name, settings in enabled(space).items():
        tracker = TRACKERS[name](settings, space.name, exp_dir)
        tracker.check()
        tracker.start()
        trackers.append(tracker)
    return trackers


def finish_tracking(trackers: list[Tracker], paths: dict[str, storage.Location], summary: dict[str, Any]) -> None:
    for tracker in trackers:
        try:
            tracker.finish(paths, summary)
        except Exception as exc:  # noqa: BLE001 -- the sweep's own files are written; say so and go on
            log.warning("tracking.%s: could not log the sweep's files: %s", tracker.name, first_line(exc))


@register_tracker("tensorboard")
class TensorBoard(Tracker):
    module, extra = "tensorboardX", "tensorboard"

    def callbacks(self) -> list:
        from ray.tune.logger import TBXLoggerCallback

        return [TBXLoggerCallback()]


@register_tracker("mlflow")
class MLflow(Tracker):
    module, extra = "mlflow", "mlflow"

    def start(self) -> None:
        from mlflow.tracking import MlflowClient

        uri = self.settings.get("tracking_uri")
        store = Path(url2pathname(urlparse(uri).path)) if uri and uri.startswith("file:") else None
        if store is not None:
            # MLflow 3 refuses its local file store unless asked: the space asked for a folder.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.experiment = self.settings.get("experiment") or self.sweep
        try:
            client = MlflowClient(tracking_uri=uri)
            found = client.get_experiment_by_name(self.experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(self.experiment)
            if store is not None:  # the runs this sweep's searches read
                repair_file_store(store / experiment_id)
            self.parent = self._parent_run(client, experiment_id)
        except Exception as exc:  # noqa: BLE001 -- unreachable server, bad URI, refused: one message
            raise RunInputError(f"tracking.mlflow: cannot use MLflow at {uri or 'its default tracking URI'}: {first_line(exc)}") from None
        self.client, self.experiment_id = client, experiment_id
        log.info("MLflow: experiment %s, sweep run %s", self.experiment, self.parent)

    def _parent_run(self, client: Any, experiment_id: str) -> str:
        """The sweep's run: the one a resumed sweep started before, else a new one."""
        where = f"tags.`{SWEEP_TAG}` = '{self.exp_dir}' and tags.`raysweep.role` = 'sweep'"
        runs = client.search_runs([experiment_id], filter_string=where, max_results=1)
        if runs:
            client.update_run(runs[0].info.run_id, status="RUNNING")
            return runs[0].info.run_id
        run = client.create_run(experiment_id, run_name=self.sweep, tags={SWEEP_TAG: str(self.exp_dir), "raysweep.role": "sweep"})
        client.log_param(run.info.run_id, "experiment", str(self.exp_dir))
        return run.info.run_id

    def callbacks(self) -> list:
        return [_TrialRuns(self.settings.get("tracking_uri"), experiment_name=self.experiment,
                           tags={PARENT_TAG: self.parent, SWEEP_TAG: str(self.exp_dir)},
                           trials_dir=storage.join(self.exp_dir, "trials"))]  # fmt: skip

    def finish(self, paths: dict[str, storage.Location], summary: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory(prefix="raysweep-mlflow-") as tmp:
            for location in [*paths.values(), storage.join(self.exp_dir, "sweep.json")]:
                if not storage.is_file(location):
                    continue
                local = Path(tmp) / storage.name(location)
                local.write_bytes(storage.read_bytes(location))
                self.client.log_artifact(self.parent, str(local))
        for key, value in summary.items():
            self.client.log_metric(self.parent, key, float(value))
        self.client.set_terminated(self.parent, "FINISHED" if summary.get("finished") else "FAILED")


def repair_file_store(experiment_dir: Path, settle_s: float = 1.0) -> list[Path]:
    """Make an experiment of a local MLflow store that a killed driver left half-written readable again.

    MLflow's file store writes without renames: a driver SIGKILLed mid-write leaves an empty
    ``meta.yaml`` (every search of the experiment then fails) or a metric file whose last line
    is cut. A run without its meta gets one rebuilt from a whole run's of the experiment (its id,
    name and artifact folder its own, status RUNNING), so a resumed trial finds its run with the
    epochs logged before the kill; with no whole run to go by, it is moved aside to
    ``<experiment>/.raysweep-unreadable/`` (its trial gets a new run). A cut line is dropped.
    What looks cut is looked at again ``settle_s`` later and left alone if it changed: another
    sweep may be writing to the same store, and its writes take far less. Returns what it changed."""
    found = _cut_short(experiment_dir)
    if found and settle_s > 0:
        time.sleep(settle_s)
        again = _cut_short(experiment_dir)
        found = {path: state for path, state in found.items() if again.get(path) == state}
    changed: list[Path] = []
    # Read only when a meta needs it: a whole store costs no more than the look above.
    template = _whole_meta(experiment_dir) if any(path.name == "meta.yaml" for path in found) else None
    for path in found:
        if path.name == "meta.yaml" and template is not None:
            path.write_text(_rebuilt_meta(path.parent, template))
            changed.append(path)
            log.warning("tracking.mlflow: run %s was cut short by a killed driver; its meta.yaml rebuilt", path.parent)
        elif path.name == "meta.yaml":
            run_dir = path.parent
            aside = run_dir.parent / ".raysweep-unreadable" / run_dir.name
            aside.parent.mkdir(exist_ok=True)
            run_dir.rename(aside)
            changed.append(aside)
            log.warning("tracking.mlflow: run %s was cut short by a killed driver; moved aside to %s", run_dir, aside)
        else:
            text = path.read_bytes()
            path.write_bytes(text[: text.rfind(b"\n") + 1])
            changed.append(path)
            log.warning("tracking.mlflow: %s was cut short by a killed driver; dropped its cut last line", path)
    return changed


def _whole_meta(experiment_dir: Path) -> Optional[dict[str, Any]]:
    """A whole run meta of the experiment, the template of the rebuilt ones."""
    for meta in experiment_dir.glob("*/meta.yaml"):
        parsed = None if meta.parent.name.startswith(".") else _parsed_meta(meta.read_bytes())
        if parsed is not None:
            return parsed
    return None


def _rebuilt_meta(run_dir: Path, template: dict[str, Any]) -> str:
    """The meta.yaml of ``run_dir``: what MLflow would have written, from a sibling's."""
    import yaml

    name_tag = run_dir / "tags" / "mlflow.runName"
    meta = {**template, "run_id": run_dir.name, "run_uuid": run_dir.name, "end_time": None, "status": 1,  # RUNNING
            "lifecycle_stage": "active", "start_time": int(run_dir.stat().st_mtime * 1000),
            "run_name": name_tag.read_text() if name_tag.is_file() else run_dir.name,
            "artifact_uri": str(template["artifact_uri"]).replace(str(template["run_id"]), run_dir.name)}  # fmt: skip
    if "run_uuid" not in template:
        del meta["run_uuid"]
    return yaml.safe_dump(meta, default_flow_style=False)


def _cut_short(experiment_dir: Path) -> dict[Path, tuple[int, int]]:
    """Each run meta that is not whole, and each metric file whose last line is cut (lines are
    ``timestamp value step``, each ended by a newline, so its last byte tells): its size and mtime."""
    found: dict[Path, tuple[int, int]] = {}
    for meta in experiment_dir.glob("*/meta.yaml"):
        if meta.parent.name.startswith("."):
            continue  # runs moved aside
        if _parsed_meta(meta.read_bytes()) is None:
            found[meta] = _state(meta)
            continue
        for metric in (meta.parent / "metrics").rglob("*"):
            if metric.is_file() and not _ends_a_line(metric):
                found[metric] = _state(metric)
    return found


def _ends_a_line(path: Path) -> bool:
    with path.open("rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return True  # empty: nothing cut
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _state(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


RUN_META_KEYS = {"run_id", "experiment_id", "user_id", "start_time", "end_time", "lifecycle_stage", "artifact_uri"}


def _parsed_meta(text: bytes) -> Optional[dict[str, Any]]:
    """The run meta, or None unless whole: it ends its last line and holds the keys MLflow's
    RunInfo is built from (MLflow writes them in sorted order, so a cut file parses but lacks
    the last ones)."""
    import yaml

    try:
        meta = yaml.safe_load(text.decode())
    except (yaml.YAMLError, UnicodeDecodeError):
        return None
    return meta if text.endswith(b"\n") and isinstance(meta, dict) and RUN_META_KEYS <= meta.keys() else None


class _TrialRuns(MLflowLoggerCallback):
    """Tune's MLflow callback, one run per trial under the sweep's run; a trial that a resumed
    sweep continues keeps its run, and gets the epochs its run lacks from its checkpoint's
    history. Failures are warnings: tracking never stops a sweep."""

    def __init__(self, *args: Any, trials_dir: storage.Location, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trials_dir = trials_dir
        self._seen: set[str] = set()  # trials whose first result this driver has handled

    def log_trial_start(self, trial: Any) -> None:
        self._guarded(self._start, trial)

    def _start(self, trial: Any) -> None:
        if trial not in self._trial_runs:
            self._trial_runs[trial] = self._existing_run(trial) or self.mlflow_util.start_run(
                tags={**self.tags, TRIAL_TAG: trial.trial_id}, run_name=trial.trial_id).info.run_id  # fmt: skip
        self.mlflow_util.log_params(run_id=self._trial_runs[trial], params_to_log=trial.config)

    def _existing_run(self, trial: Any) -> Optional[str]:
        client = self.mlflow_util._get_client()
        where = f"tags.`{TRIAL_TAG}` = '{trial.trial_id}' and tags.`{PARENT_TAG}` = '{self.tags[PARENT_TAG]}'"
        runs = client.search_runs([self.mlflow_util.experiment_id], filter_string=where, max_results=1)
        return runs[0].info.run_id if runs else None

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        if trial in self._trial_runs:
            if trial.trial_id not in self._seen:
                self._seen.add(trial.trial_id)
                self._guarded(self._backfill, trial, result)
            self._guarded(super().log_trial_result, iteration, trial, result)

    def _backfill(self, trial: Any, result: dict) -> None:
        """A trial resumed after a killed driver starts past epoch 0. The driver may have died
        after the trial saved an epoch's checkpoint but before it logged that epoch here; the
        checkpoint's history has every epoch, so the run gets the ones it lacks."""
        epoch, run_id = result.get("epoch"), self._trial_runs[trial]
        if not isinstance(epoch, int) or epoch <= 0:
            return  # a trial's first epoch: nothing before it
        logged = {int(m.value) for m in self.mlflow_util._get_client().get_metric_history(run_id, "epoch")}
        if set(range(epoch)) <= logged:
            return
        state = CheckpointFolder(storage.join(self.trials_dir, trial.trial_id)).latest()
        missing = [m for m in (state.history if state else []) if m["epoch"] < epoch and m["epoch"] not in logged]
        for metrics in missing:
            self.mlflow_util.log_metrics(run_id=run_id, metrics_to_log=metrics, step=metrics["epoch"] + 1)
        if missing:
            log.info("tracking.mlflow: trial %s: logged epochs %s from its checkpoint", trial.trial_id, [m["epoch"] for m in missing])

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        if trial in self._trial_runs:
            self._guarded(super().log_trial_end, trial, failed)

    @staticmethod
    def _guarded(fn: Callable, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 -- see the class doc
            log.warning("tracking.mlflow: %s", first_line(exc))
