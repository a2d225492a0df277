"""One run outside a sweep (``raysweep.train``/``.prune``): check the inputs, start Ray, run a
``TorchTrainer``, write the run directory.

A run directory (``<output>/<name>/``) holds ``config.json`` (the resolved config),
``metrics.csv`` (one row per epoch), ``final.pt`` and ``best.pt`` (the best is taken only
among epochs at the final sparsity with frozen masks), ``layers.csv`` (per-layer sparsity
and MACs), ``run.log`` and ``summary.json``, beside Ray Train's own checkpoints.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from raysweep import ray_env, storage
from raysweep.config import RunConfig
from raysweep.errors import RunInputError, first_line
from raysweep.trial.checkpoint import CHECKPOINT_FILE, CheckpointError, load_weights, read_checkpoint

log = logging.getLogger("raysweep.runner")


def check_inputs(cfg: RunConfig) -> None:
    """Everything that can be checked without Ray: names, files, targets. Raises RunInputError."""
    import torch

    import pruners
    from raysweep.data import build_datasets
    from raysweep.models import check_on_sample, create_model, describe

    problems: list[str] = []
    try:
        _, val, info = build_datasets(cfg.dataset, cfg.data_root, options=cfg.dataset_options)
    except (ValueError, FileNotFoundError) as exc:
        raise RunInputError(str(exc)) from None
    try:
        model = create_model(cfg.model, num_classes=info.num_classes, input_size=tuple(info.input_size),
                             dataset=cfg.dataset, pretrained=cfg.pretrained)  # fmt: skip
        check_on_sample(model, val[0], info.num_classes, describe(cfg.model))
    except (ValueError, FileNotFoundError) as exc:
        raise RunInputError(str(exc)) from None
    if cfg.weight_file:
        if not os.path.isfile(cfg.weight_file):
            problems.append(f"weight file not found: {cfg.weight_file}")
        else:
            try:
                load_weights(model, cfg.weight_file)
            except CheckpointError as exc:
                problems.append(f"cannot load weight file: {exc}")
            except Exception as exc:  # a state dict of another model
                problems.append(f"cannot load weight file {cfg.weight_file} into {cfg.model}: {first_line(exc)}")
    if cfg.method:
        try:
            pruners.get_method(cfg.method)
            pruners.get_schedule(cfg.schedule, **cfg.schedule_params)
            if not cfg.targets and not cfg.allocation:
                problems.append("a prune run needs targets: --config_file or --ratio")
            else:
                _warn_about_targets(model, cfg, pruners.resolve_targets(model, cfg.targets))
        except ValueError as exc:
            problems.append(str(exc))
    for name in ("epochs", "batch_size", "workers"):
        if getattr(cfg, name) < 1:
            problems.append(f"--{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.batch_size < cfg.workers:
        problems.append(f"--batch_size {cfg.batch_size} is smaller than --workers {cfg.workers}")
    if cfg.use_gpu and not torch.cuda.is_available() and not os.environ.get("RAY_ADDRESS"):
        problems.append("--use_gpu given but this machine has no CUDA GPU")
    if cfg.sync_bn and not cfg.use_gpu:
        problems.append("--sync_bn needs --use_gpu (SyncBatchNorm runs on CUDA only)")
    problems += training_problems(cfg)
    if problems:
        raise RunInputError("\n".join(problems))


def _warn_about_targets(model: Any, cfg: RunConfig, resolved: dict[str, Any]) -> None:
    """What runs but is almost never meant: random weights pruned, classes removed, no layer pruned."""
    import pruners
    from raysweep.space.targets import warn_if_classes_go

    if not cfg.weight_file:
        log.warning("no --weight_file: pruning a randomly initialised %s (pass the dense weights to prune a trained model)", cfg.model)
    warn_if_classes_go(model, cfg.method, resolved, "--prune_type")
    pruned = {n: t for n, t in resolved.items() if t not in (0, 0.0)}
    skipped = {n: pruners.skip_reason(cfg.method, model.get_submodule(n.rpartition(".")[0]), t) for n, t in pruned.items()}
    if pruned and all(skipped.values()):
        log.warning("%s prunes none of the targeted layers, so the model stays dense: %s", cfg.method,
                    "; ".join(f"{n}: {why}" for n, why in skipped.items()))  # fmt: skip


def training_problems(cfg: RunConfig) -> list[str]:
    """The recipe's own fields: precision for the device, distillation's teacher, value ranges."""
    from raysweep.trial.precision import check_precision

    problems = [p for p in [check_precision(cfg.precision, cfg.use_gpu, "--use_gpu is not given")] if p]
    if cfg.distill_alpha > 0 and not cfg.weight_file:
        problems.append("--distill_alpha needs a teacher: the dense model's weights (--weight_file)")
    ranges = {"distill_alpha": (0.0, 1.0, True), "label_smoothing": (0.0, 1.0, False)}
    for name, (low, high, closed) in ranges.items():
        value = getattr(cfg, name)
        if not (low <= value <= high if closed else low <= value < high):
            problems.append(f"--{name} must be in [{low:g}, {high:g}{']' if closed else ')'}, got {value:g}")
    if cfg.distill_temperature <= 0:
        problems.append(f"--distill_temperature must be > 0, got {cfg.distill_temperature:g}")
    if cfg.warmup_epochs < 0:
        problems.append(f"--warmup_epochs must be >= 0, got {cfg.warmup_epochs:g}")
    if cfg.use_gpu and cfg.gpus_per_worker <= 0:
        problems.append(f"--gpus_per_worker must be > 0 with --use_gpu, got {cfg.gpus_per_worker:g}")
    return problems


def check_fits(cfg: RunConfig, resources: dict[str, float], where: str) -> None:
    """The run's workers must fit ``resources`` (this machine before a local Ray starts, the
    cluster once connected), or Ray would wait for them forever."""
    need_cpu = cfg.workers * cfg.cpus_per_worker
    if resources.get("CPU", 0) + 1e-9 < need_cpu:
        raise RunInputError(
            f"--workers {cfg.workers} x --cpus_per_worker {cfg.cpus_per_worker:g} needs {need_cpu:g} CPUs; "
            f"{where} has {resources.get('CPU', 0):g}"
        )
    need_gpu = cfg.workers * cfg.gpus_per_worker
    if cfg.use_gpu and resources.get("GPU", 0) + 1e-9 < need_gpu:
        raise RunInputError(f"--workers {cfg.workers} x --gpus_per_worker {cfg.gpus_per_worker:g} with --use_gpu needs "
                            f"{need_gpu:g} GPUs; {where} has {resources.get('GPU', 0):g}")  # fmt: skip


def build_trainer(
    cfg: RunConfig, storage_path: str, name: str, callbacks: Optional[list] = None, run_dir: str = "",
    loop: Optional[Callable[[dict], None]] = None, loop_config: Optional[dict[str, Any]] = None,
):
    """The ``TorchTrainer`` for one run (``loop``: ``train_loop_per_worker`` on ``cfg``); the
    sweep's ``trainer`` trials and its worker pool (raysweep.sweep.pool) build theirs here too."""
    import ray.train
    from ray.train.torch import TorchTrainer

    # Here too, not only in init_ray: in a sweep on an existing cluster this runs in a Ray worker,
    # whose environment is the node's, and Ray Train passes these on from the trainer's process.
    ray_env.apply_ray_env_defaults()
    return TorchTrainer(
        loop or train_loop_per_worker,
        train_loop_config=loop_config if loop_config is not None else {"run": cfg.to_dict(), "run_dir": run_dir},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers,
            use_gpu=cfg.use_gpu,
            # A fraction of a GPU (gpus_per_worker 0.25) lets Ray place several trials on one GPU.
            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if cfg.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="score", checkpoint_score_order="max"
            ),
            callbacks=callbacks,
            # Ray Train's per-report INFO lines drown the epoch log; warnings still show.
            logging_config=ray.train.LoggingConfig(log_level=ray_env.train_log_level()),
        ),
    )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry point: the loop in one rank of the worker group."""
    from raysweep.trial.loop import run_loop
    from raysweep.trial.sessions import TrainSession

    ray_env.quiet_report_lines()
    run_loop(config, TrainSession())


@dataclass
class RunResult:
    run_dir: storage.Location  # a folder, or a storage URI (a sweep's dense run on an object store)
    metrics: dict[str, Any]
    final_checkpoint: storage.Location
    best_checkpoint: Optional[storage.Location]


def fresh_run_dir(cfg: RunConfig) -> RunConfig:
    """A new run never silently continues an old one: ``name``, ``name-2``, ``name-3``... An
    empty folder (a run that never started) is not an old run."""
    base, n = cfg.run_name(), 1
    while _holds_something(Path(cfg.output).expanduser().resolve() / cfg.run_name()):
        n += 1
        cfg.name = f"{base}-{n}"
    return cfg


def _holds_something(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def execute(cfg: RunConfig, *, resume: bool = False, address: Optional[str] = None) -> RunResult:
    """Run to completion and write the run directory. Inputs must already be checked; the
    workers are checked against this machine (local Ray) or the cluster before anything is written."""
    import ray

    if not ray_env.joins_a_cluster(address):
        check_fits(cfg, ray_env.local_resources(), "this machine")
    ray_env.init_ray(address)
    check_fits(cfg, ray.cluster_resources(), "the Ray cluster")
    if not resume:
        cfg = fresh_run_dir(cfg)
    remote = storage.is_uri(cfg.output)  # Ray Train writes there itself; the run's files follow it
    run_dir = storage.join(cfg.output, cfg.run_name()) if remote else cfg.run_dir()
    storage.makedirs(run_dir)
    storage.write_text(storage.join(run_dir, "config.json"), cfg.to_json())
    started = time.time()
    trainer = build_trainer(cfg, str(storage.parent(run_dir)), storage.name(run_dir), run_dir="" if remote else str(run_dir))
    result = trainer.fit()
    return collect_run(result, run_dir, wall_s=time.time() - started)


def collect_run(result, run_dir: storage.Location, wall_s: float) -> RunResult:
    """Turn a Ray Train ``Result`` into the run directory's files (a folder or a storage URI).
    ``final.pt`` comes last: a run directory holding it is complete (a sweep's dense cache)."""
    import pandas as pd

    final_ckpt = storage.join(run_dir, "final.pt")
    best_ckpt: Optional[storage.Location] = None
    finals = [(c, m) for c, m in (result.best_checkpoints or []) if m.get("final")]
    if finals:
        best, _ = max(finals, key=lambda cm: cm[1]["score"])
        best_ckpt = storage.join(run_dir, "best.pt")
        with best.as_directory() as d:
            storage.upload_file(Path(d) / CHECKPOINT_FILE, best_ckpt)
    with result.checkpoint.as_directory() as d:
        final = read_checkpoint(Path(d) / CHECKPOINT_FILE)
        storage.write_text(storage.join(run_dir, "metrics.csv"), pd.DataFrame(final.history).to_csv(index=False))
        storage.write_text(storage.join(run_dir, "layers.csv"), pd.DataFrame(final.layers).to_csv(index=False))
        metrics = dict(result.metrics)
        summary = {**metrics, "wall_s": wall_s, "final_checkpoint": str(final_ckpt), "best_checkpoint": str(best_ckpt) if best_ckpt else None}
        storage.write_text(storage.join(run_dir, "summary.json"), json.dumps(summary, indent=2, default=str) + "\n")
        storage.upload_file(Path(d) / CHECKPOINT_FILE, final_ckpt)
    return RunResult(run_dir, metrics, final_ckpt, best_ckpt)
