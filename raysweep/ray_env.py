"""Ray as raysweep starts and tunes it: where to connect, the settings that cut a run's fixed
cost, and the log lines Ray would otherwise print for every report (README "Ray settings")."""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

# Ray Train V2 settings that cut a run's fixed cost on small machines. Each is only a default:
# a value already in the environment wins.
RAY_ENV_DEFAULTS = {
    # The controller polls its workers this often (default 2 s): every report waits for it.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    # The preemption watcher is an extra actor per run that only matters on spot/drained nodes.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}
# Ray Tune settings for a sweep, defaults in the same way.
TUNE_ENV_DEFAULTS = {
    # The sweep draws its own progress view (raysweep.sweep.progress); Tune's stays quiet.
    "RAY_AIR_NEW_OUTPUT": "0",
    # A failed trial is one line of the progress view, its traceback in the trial's error file.
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",
}


def apply_ray_env_defaults(defaults: Optional[dict[str, str]] = None) -> None:
    for key, value in (RAY_ENV_DEFAULTS if defaults is None else defaults).items():
        os.environ.setdefault(key, value)


def init_ray(address: Optional[str] = None, num_cpus: Optional[int] = None, log_to_driver: bool = True) -> None:
    """Start (or join) Ray with the dashboard on loopback; token auth stays as Ray sets it.

    ``log_to_driver=False`` keeps the workers' lines off this console (a sweep's trials log to
    their folders). An address where no cluster answers within ``RAYSWEEP_CONNECT_TIMEOUT_S``
    (default 20) is a ``RunInputError`` instead of Ray's minutes of retries."""
    import ray

    apply_ray_env_defaults()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"log_to_driver": log_to_driver, "configure_logging": False}
    if address:
        wait_for_cluster(address, float(os.environ.get("RAYSWEEP_CONNECT_TIMEOUT_S", "20")))
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", **kwargs)


def wait_for_cluster(address: str, timeout_s: float) -> None:
    """A TCP connection to the cluster's ``host:port`` (GCS or Ray Client) within ``timeout_s``."""
    import socket
    import time

    from raysweep.errors import RunInputError

    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return  # "auto", "local": Ray finds the cluster itself
    deadline, last = time.monotonic() + timeout_s, None
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=max(1.0, min(5.0, timeout_s))):
                return
        except OSError as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise RunInputError(f"no Ray cluster answers at {address} (tried for {timeout_s:g} s: {last}); "
                                "start it (ray start --head) or fix --address / RAY_ADDRESS "
                                "(RAYSWEEP_CONNECT_TIMEOUT_S sets how long to wait)")  # fmt: skip
        time.sleep(1.0)


def joins_a_cluster(address: Optional[str] = None) -> bool:
    """Whether ``init_ray(address)`` would connect to an existing cluster (else: start a local Ray)."""
    return bool(address or os.environ.get("RAY_ADDRESS"))


def local_resources() -> dict[str, float]:
    """What a local Ray started by ``init_ray()`` has: this machine's CPUs (as Ray counts them,
    cgroup limits included) and CUDA GPUs. Checks run against it before Ray starts."""
    try:
        from ray._private.utils import get_num_cpus

        cpus = float(get_num_cpus())
    except Exception:  # noqa: BLE001 -- a Ray without that helper: the OS's count
        cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    import torch

    return {"CPU": cpus, "GPU": float(torch.cuda.device_count())}


def train_log_level() -> str:
    """Ray Train's own log level (RAYSWEEP_TRAIN_LOG_LEVEL, default WARNING)."""
    return os.environ.get("RAYSWEEP_TRAIN_LOG_LEVEL", "WARNING").upper()


def quiet_report_lines() -> None:
    """Ray Train logs every report with all its metrics at INFO under a logger named after its
    file path, which ``LoggingConfig`` does not reach; it would drown the epoch lines."""
    from ray.train.v2._internal.execution import context as train_context

    logging.getLogger(train_context.__file__).setLevel(train_log_level())
