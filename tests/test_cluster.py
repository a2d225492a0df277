"""On a Ray cluster: `ray start` with token authentication, `ray job submit`, a second node,
`ray job stop` and `--resume`. Real Ray processes on loopback, no mocks.

The nodes share no folder: each has its own temporary working directory (and Ray's own folders
under it), and the sweep's storage is a bucket of the session's S3 server (moto's, on loopback:
tests/s3server.py), as on a cloud cluster. The dense model is trained once into the bucket and
read from there by the trials on the other node; nothing the sweep writes lands on a disk.

One head node and one worker node (2 CPUs each) serve the whole module, and one sweep serves
every check: submitted, stopped once its first trial has finished (the stop lands while later
trials still run), submitted again with --resume.

Which node runs the trials is made certain, not left to timing: a trial's worker takes 1.5 CPUs,
and each job's driver reserves 1 CPU on the node it is sent to (`--entrypoint-num-cpus 1
--entrypoint-resources`), so no worker fits there. The first submission's driver runs on the
worker node, so its trials train on the head; the resubmission's driver runs on the head, so the
remaining trials train on the worker node. (Two trials merely running "at once" are not enough:
with process start-up dominating a one-epoch trial, their workers often never overlap, and Ray
then packs them all on one node.)

The cluster has its own token file (``RAY_AUTH_TOKEN_PATH``), never ``~/.ray/auth_token``, and
is stopped at the end by its own processes (its process groups, its folder, their children).
Never ``ray stop``: that stops every Ray process on the machine, the test session's own Ray
(tests/conftest.py) and other people's included.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

import pandas as pd
import pytest

from helpers import tiny_space, write_space
from raysweep import storage

try:
    import psutil
except ImportError:  # Ray ships its own copy, importable once ray is imported
    import ray  # noqa: F401
    import psutil

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]

SPACE = tiny_space(
    "tiny", dense="train", dense_epochs=3, trials=5, seed=3,
    # A user's model and data, not the zoo's: importable only from the repository, which the
    # job's --working-dir ships to every node (the nodes start in folders of their own).
    model="tests.user_code:SmallNet", dataset="tests.user_code:digits_pair",
    methods={"irregular": {"*": {"uniform": [0.3, 0.9]}, "head.3.weight": 0.5},
             "nm": {"*": {"choice": ["m4n2", "m8n2"]}, "stem.weight": 0.0, "depthwise.weight": 0.0}},
    # `ray job stop` takes effect some 5-10 s after it is asked (CLI start, SIGTERM, a grace
    # period): trials of a few seconds each, and five of them, so that it lands midway.
    epochs=10,
    # A 2-CPU node holds one trial's worker, and none beside a driver that reserves 1 CPU.
    resources={"workers_per_trial": 1, "cpus_per_worker": 1.5},
)  # fmt: skip
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# What a client would otherwise pick up from this process's environment.
_CLIENT_ENV = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_JOB_HEADERS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ray_cli() -> list[str]:
    exe = Path(sys.executable).with_name("ray")
    return [str(exe)] if exe.exists() else [shutil.which("ray") or "ray"]


class Cluster:
    """A head node and a worker node started with `ray start`, each in a folder of its own under
    ``root``; the sweep's storage is a bucket (``s3``: tests/s3server.MotoS3)."""

    def __init__(self, root: Path, s3):
        self.root = root
        self.token = secrets.token_hex(32)
        self.token_file = root / "auth_token"
        self.token_file.write_text(self.token)
        self.token_file.chmod(0o600)
        self.storage = s3.uri("cluster")
        self.nodes = {node: root / node for node in ("head", "worker")}  # each node's working directory
        for folder in self.nodes.values():
            folder.mkdir()
        self.pgids: list[int] = []
        self.gcs = self.dashboard = ""
        base = {k: v for k, v in os.environ.items() if k not in _CLIENT_ENV}
        base.update(s3.env, RAY_USAGE_STATS_ENABLED="0")  # every node reaches the bucket, as a cloud node does
        # The head needs no RAY_AUTH_MODE: `ray start --head` turns token auth on when it finds a token.
        self.head_env = {**base, "RAY_AUTH_TOKEN_PATH": str(self.token_file)}
        # Everything joining or calling the cluster needs the mode and the token.
        self.env = {**self.head_env, "RAY_AUTH_MODE": "token"}

    def _start_node(self, args: list[str], env: dict, cwd: Path, attempts: int = 2) -> None:
        """`ray start`; tried twice, because on a loaded machine a raylet can miss Ray's fixed
        30-second registration deadline ("The current node timed out during startup")."""
        for attempt in range(attempts):
            proc = subprocess.Popen(
                [*_ray_cli(), "start", *args, "--disable-usage-stats"], env=env, cwd=cwd,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            )
            self.pgids.append(proc.pid)  # the node's processes stay in this group after `ray start` exits
            try:
                out, _ = proc.communicate(timeout=180)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            if proc.returncode == 0:
                return
            self._kill(lambda p: os.getpgid(p.pid) == proc.pid)  # what that attempt left behind
        raise AssertionError(f"ray start {' '.join(args)} failed:\n{out[-4000:]}")

    def start(self) -> None:
        port, dash, client, agent, agent2 = _free_ports(5)
        self.gcs, self.dashboard = f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}"
        common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--object-store-memory", str(200 * 1024**2)]
        self._start_node([
            "--head", "--port", str(port), "--dashboard-port", str(dash), "--dashboard-host", "127.0.0.1",
            "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
            "--temp-dir", str(self.nodes["head"] / "ray"), "--resources", '{"head_node": 1}', *common,
        ], self.head_env, self.nodes["head"])
        self._start_node([
            "--address", self.gcs, "--dashboard-agent-listen-port", str(agent2),
            "--temp-dir", str(self.nodes["worker"] / "ray"), "--resources", '{"worker_node": 1}', *common,
        ], self.env, self.nodes["worker"])
        deadline = time.time() + 60
        while len(self.alive_nodes()) < 2:
            assert time.time() < deadline, f"the worker node did not join: {self.alive_nodes()}"
            time.sleep(1)

    def stop(self) -> None:
        """This cluster's processes only: its `ray start` process groups, anything whose command
        line names its folder (job drivers run in sessions of their own), and their children."""
        self._kill(lambda p: os.getpgid(p.pid) in self.pgids or str(self.root) in " ".join(p.info["cmdline"] or ()))

    @staticmethod
    def _kill(match) -> None:
        """SIGTERM, then SIGKILL after 8 s, to the matching processes and all their children."""
        procs: dict[int, psutil.Process] = {}
        for p in psutil.process_iter(["cmdline"]):
            try:
                if p.pid != os.getpid() and match(p):
                    procs[p.pid] = p
            except (psutil.Error, OSError):
                pass
        for p in list(procs.values()):
            try:
                procs.update({c.pid: c for c in p.children(recursive=True)})
            except psutil.Error:
                pass
        procs.pop(os.getpid(), None)
        for p in procs.values():
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(list(procs.values()), timeout=8)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)

    def ray(self, *args: str, env: Optional[dict] = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*_ray_cli(), *args], env=self.env if env is None else env, capture_output=True, text=True, timeout=timeout)

    def get(self, path: str) -> dict:
        """The dashboard's REST API, with the token (what `ray job status` does, minus a Python start)."""
        req = urllib.request.Request(self.dashboard + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    def alive_nodes(self) -> set[str]:
        try:
            nodes = self.get("/api/v0/nodes?detail=false")["data"]["result"]["result"]
        except (urllib.error.URLError, OSError, KeyError):
            return set()
        return {n["node_id"] for n in nodes if n["state"] == "ALIVE"}

    def job(self, submission_id: str) -> dict:
        return self.get(f"/api/jobs/{submission_id}")

    def logs(self, submission_id: str) -> str:
        try:
            return self.get(f"/api/jobs/{submission_id}/logs")["logs"][-6000:]
        except (urllib.error.URLError, OSError, KeyError) as exc:
            return f"(no logs: {exc})"

    def wait(self, submission_id: str, timeout: float) -> dict:
        deadline = time.time() + timeout
        while True:
            info = self.job(submission_id)
            if info["status"] in TERMINAL or time.time() > deadline:
                return info
            time.sleep(2)

    def node_ids(self) -> dict[str, str]:
        """{"head": node id, "worker": node id}."""
        nodes = self.get("/api/v0/nodes?detail=true")["data"]["result"]["result"]
        return {("head" if n["is_head_node"] else "worker"): n["node_id"] for n in nodes if n["state"] == "ALIVE"}

    def submit(self, submission_id: str, driver_node: str, *search_args: str, wait: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        """`ray job submit` of the sweep with `--working-dir` the repository, as a user would from
        a checkout: Ray ships the code to every node and the driver runs in that copy (the
        package is installed here too, so this is what a user does, not a necessity). `python`
        is this interpreter, the one the nodes run (on a CI machine `python` may be another).
        The space file is in the driver node's own folder."""
        space = write_space(self.nodes[driver_node], SPACE)
        entry = [sys.executable, "-m", "raysweep.search", "--space", str(space), *search_args, "--storage", self.storage, "-q"]
        args = ["job", "submit", "--address", self.dashboard, "--submission-id", submission_id, "--working-dir", str(REPO),
                "--entrypoint-num-cpus", "1", "--entrypoint-resources", json.dumps({f"{driver_node}_node": 1})]
        return self.ray(*args, *([] if wait else ["--no-wait"]), "--", *entry, timeout=timeout)


@pytest.fixture(scope="module")
def cluster(s3):
    # A short folder: Ray's socket paths under it must stay below the 107-character limit.
    root = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp" if os.path.isdir("/tmp") else None))
    c = Cluster(root, s3)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def resumed(cluster, checkpointed_epochs):
    """One tiny sweep, submitted with `ray job submit`, stopped with `ray job stop` once a trial
    has finished, then submitted again with `--resume` (blocking, as docs/cluster.md shows it).

    One sweep serves the submission, two-node and stop/resume checks: a second sweep would add
    minutes on a 2-core machine."""
    exp = storage.join(cluster.storage, SPACE["name"])
    out: dict = {"exp": exp}
    started = time.time()
    # The driver on the worker node: the dense model and these trials train on the head.
    r = cluster.submit("raysweep-tiny", "worker", wait=False)
    assert r.returncode == 0, r.stderr[-3000:]
    deadline = time.time() + 300
    last = SPACE["epochs"] - 1
    while not any(e == last for e in checkpointed_epochs(exp).values()):
        status = cluster.job("raysweep-tiny")["status"]
        assert status not in TERMINAL, f"{status} before any trial finished:\n{cluster.logs('raysweep-tiny')}"
        assert time.time() < deadline, cluster.logs("raysweep-tiny")
        time.sleep(0.5)
    out["stop"] = cluster.ray("job", "stop", "--address", cluster.dashboard, "raysweep-tiny", timeout=120)
    out["stopped"] = cluster.wait("raysweep-tiny", timeout=60)
    # Trials done before the stop ran on the head; a trial stopped midway continues on the worker.
    out["finished_before_ids"] = {t for t, e in checkpointed_epochs(exp).items() if e == last}
    out["finished_before"] = len(out["finished_before_ids"])
    # `ray job stop` is SIGTERM, then SIGKILL 3 s later: reports written in between list what had finished.
    out["reports_before"] = _trials(exp) if storage.exists(storage.join(exp, "trials.csv")) else None
    time.sleep(2)  # let Ray free the stopped job's trial workers
    out["resubmitted"] = time.time()
    # The driver on the head: the remaining trials train on the worker node.
    out["proc"] = cluster.submit("raysweep-resumed", "head", "--resume", "--name", SPACE["name"], timeout=400)
    out["info"] = cluster.wait("raysweep-resumed", timeout=30)
    out["seconds"] = time.time() - started
    return out


def test_a_submission_without_the_token_is_refused(cluster):
    cmd = ["job", "submit", "--address", cluster.dashboard, "--no-wait", "--", "python", "-c", "print(1)"]
    # The token file is there but RAY_AUTH_MODE is not set: the client sends no token.
    no_mode = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_MODE"}
    r = cluster.ray(*cmd, "--submission-id", "no-token", env=no_mode)
    assert r.returncode != 0
    assert "AuthenticationError" in r.stderr and "Missing authentication token" in r.stderr, r.stderr[-2000:]
    # The mode set, a wrong token.
    wrong = {**cluster.env, "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    r = cluster.ray(*cmd, "--submission-id", "wrong-token", env=wrong)
    assert r.returncode != 0
    assert "Invalid authentication token" in r.stderr, r.stderr[-2000:]
    # The REST API refuses a request without the token, too; neither job exists.
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(cluster.dashboard + "/api/jobs/", timeout=30)
    assert err.value.code == 401
    for sid in ("no-token", "wrong-token"):
        with pytest.raises(urllib.error.HTTPError):
            cluster.job(sid)


def test_ray_job_stop_stops_the_sweep_midway(resumed):
    assert resumed["stop"].returncode == 0, resumed["stop"].stderr[-3000:]
    assert resumed["stopped"]["status"] == "STOPPED"
    assert 1 <= resumed["finished_before"] < SPACE["trials"], "every trial finished before the stop: nothing left to resume"
    before = resumed["reports_before"]
    assert before is None or (before["status"] == "TERMINATED").sum() < SPACE["trials"], before


def test_the_resubmission_with_resume_succeeds_and_writes_the_reports(resumed, cluster, s3):
    info, proc = resumed["info"], resumed["proc"]
    assert info["status"] == "SUCCEEDED", f"{info.get('message')}\n{cluster.logs('raysweep-resumed')}"
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("trials.csv", "pareto.csv", "report.md", "report.html", "pareto.png"):
        assert storage.is_file(storage.join(resumed["exp"], name)), name
    (dense,) = [k for k in s3.keys("cluster/dense/") if k.endswith("/final.pt")]  # trained once, in the bucket
    modified = s3.client().head_object(Bucket="raysweep", Key=dense)["LastModified"].timestamp()
    assert modified < resumed["resubmitted"], "the resumed sweep found the cached dense weights"
    print(f"submit, stop, resubmit: {resumed['seconds']:.0f} s")


def _trials(exp) -> pd.DataFrame:
    with storage.open_input(storage.join(exp, "trials.csv")) as f:
        return pd.read_csv(f)


def test_every_trial_appears_exactly_once_and_finished(resumed, checkpointed_epochs):
    trials = _trials(resumed["exp"])
    assert len(trials) == SPACE["trials"] and trials["trial_id"].is_unique, trials[["trial_id", "status"]]
    failed = trials.loc[trials["status"] != "TERMINATED", ["trial_id", "status", "error"]]
    assert failed.empty, failed.to_dict("records")  # whole error texts: a frame's repr cuts them
    assert checkpointed_epochs(resumed["exp"]) == dict.fromkeys(trials["trial_id"], SPACE["epochs"] - 1)


def test_the_trials_of_one_sweep_ran_on_both_nodes(resumed, cluster):
    trials = _trials(resumed["exp"])
    nodes = cluster.node_ids()
    assert trials["node_id"].nunique() == 2, trials[["trial_id", "node_id"]]
    assert set(trials["node_id"]) == set(nodes.values())
    # node_id is the node of each trial's rank 0, where the scheduling put it
    expected = {t: nodes["head" if t in resumed["finished_before_ids"] else "worker"] for t in trials["trial_id"]}
    assert dict(zip(trials["trial_id"], trials["node_id"])) == expected


def test_nothing_the_sweep_writes_lands_on_a_nodes_disk(resumed, cluster):
    """Everything is in the bucket: the nodes' folders, Ray's own and the jobs' copies of the
    code included, hold no report, checkpoint, sweep.json, trial log or dense weights. (Tune
    keeps a copy of the experiment's .json files in its driver's staging folder, its cache.)"""
    written = ("sweep.json", "trials.csv", "pareto.csv", "report.md", "checkpoint.pt", "final.pt", "run.log")
    found = [p for name in written for p in cluster.root.rglob(name) if "driver_artifacts" not in p.parts]
    assert not found, found


def test_the_users_module_reached_every_node_with_the_job(resumed, cluster):
    """tests.user_code is no installed package: on a node it imports only from the job's copy of
    the repository (--working-dir), and the trials on both nodes built the user's model with it."""
    for folder in cluster.nodes.values():
        r = subprocess.run([sys.executable, "-c", "import tests.user_code"], cwd=folder, capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})  # fmt: skip
        assert r.returncode != 0 and "No module named 'tests" in r.stderr, r.stderr[-500:]
    trials = _trials(resumed["exp"])
    assert {"ratio/depthwise.weight", "ratio/head.3.weight"} <= set(trials.columns)
    assert (trials["status"] == "TERMINATED").all() and trials["node_id"].nunique() == 2
