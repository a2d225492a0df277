"""The training loop every rank runs: one function for ``raysweep.train``, ``raysweep.prune``
and every sweep trial, whichever session (raysweep.trial.sessions) it runs in.

``run_loop`` reads as the steps of a run: data and model, starting weights, pruning (allocation,
N:M permutation, masks -- before the DDP wrap), the resumed state, the feeds (batches on the
device, raysweep.data), the training set-up (memory format, DDP, optimizer, LR schedule, the
distillation teacher, compilation), then per epoch the schedule, a pass of SGD, evaluation,
and a report with a checkpoint.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

import pruners
from raysweep.config import RunConfig
from raysweep.data import Feeds, build_datasets, build_feeds
from raysweep.models import create_model
from raysweep.trial.checkpoint import Checkpoint, load_weights
from raysweep.trial.distill import Criterion, load_teacher
from raysweep.trial.epoch import TrainStep, evaluate, rank_checksums, train_one_epoch
from raysweep.trial.optim import build_lr_schedule, build_optimizer
from raysweep.trial.precision import Compute, compiled
from raysweep.trial.pruning import Pruning, set_up_pruning
from raysweep.trial.sessions import LoopSession

log = logging.getLogger("raysweep.loop")

REPORTED_FIGURES = (
    "sparsity", "sparsity_conv", "sparsity_seed", "params_total", "params_remaining",
    "macs_dense", "macs_remaining", "flops_ratio",
)  # fmt: skip


@dataclass
class Progress:
    """Carried in every checkpoint, so a restarted or resumed run keeps its whole history."""

    epoch: int = -1
    best_accuracy: float = float("nan")
    train_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def resumed(cls, saved: Optional[Checkpoint]) -> "Progress":
        if saved is None:
            return cls()
        return cls(saved.epoch, saved.best_accuracy, saved.train_s, list(saved.history))


def run_loop(config: dict[str, Any], session: LoopSession) -> None:
    """``config``: ``{"run": RunConfig.to_dict(), "run_dir": folder for run.log or ""}``."""
    cfg = RunConfig.from_dict(config["run"])
    rank, world = session.world_rank, session.world_size
    if rank == 0:
        _attach_run_log(config.get("run_dir"))
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    torch.manual_seed(cfg.seed)
    device = session.device()
    compute = Compute(cfg.precision, device, cfg.channels_last)  # fp16 without CUDA stops here

    train_ds, val_ds, info = build_datasets(cfg.dataset, cfg.data_root, options=cfg.dataset_options)
    new_model = functools.partial(create_model, cfg.model, num_classes=info.num_classes, dataset=cfg.dataset, pretrained=cfg.pretrained)
    model = new_model()
    if cfg.weight_file:
        load_weights(model, cfg.weight_file)
    if cfg.sync_bn and world > 1:  # before the masks: converting copies BatchNorm weights, masked ones too
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    example = torch.zeros((1, *info.input_size))
    saved = session.resume_state()  # applied once the masks exist
    pruning = set_up_pruning(model, cfg, example, rank, saved)
    progress = Progress.resumed(saved)
    if saved is not None:
        model.load_state_dict(saved.model)
        if rank == 0:
            log.info("resumed from the checkpoint of epoch %d", progress.epoch)
    if saved is not None and progress.epoch + 1 >= cfg.epochs:
        # Restarted after its last epoch (e.g. a resumed sweep whose driver died before
        # seeing this report): report the final metrics again so the caller gets them.
        session.report(saved.metrics, None, progress.epoch)
        return

    feeds = build_feeds(train_ds, val_ds, info, device=device, batch_size=per_worker_batch(cfg, world), seed=cfg.seed,
                        rank=rank, world=world, cpus=cfg.cpus_per_worker)  # fmt: skip
    if rank == 0:
        log.info("data: %s; %s, channels_last %s, compile %s", feeds.where, cfg.precision, cfg.channels_last, cfg.compile)
    run = _Run(cfg, session, model, compute, feeds, example, tuple(info.input_size), pruning, progress)
    run.set_up_training(new_model, saved)
    for epoch in range(progress.epoch + 1, cfg.epochs):
        run.epoch(epoch)


def per_worker_batch(cfg: RunConfig, world: int) -> int:
    return max(1, cfg.batch_size // world)


@dataclass
class _Run:
    """Everything an epoch needs, built once by ``run_loop``."""

    cfg: RunConfig
    session: LoopSession
    core: nn.Module  # the model itself (masks attached), inside any DDP wrapper
    compute: Compute
    feeds: Feeds
    example: torch.Tensor
    input_size: tuple[int, ...]
    pruning: Pruning
    progress: Progress
    model: Optional[nn.Module] = None  # as the session prepared it: DDP-wrapped with several ranks; evaluated
    step: Optional[TrainStep] = None  # trains ``model``, compiled when asked

    @property
    def device(self) -> torch.device:
        return self.compute.device

    def set_up_training(self, new_model: Callable[[], nn.Module], saved: Optional[Checkpoint]) -> None:
        """Memory format, DDP, optimizer, LR schedule, teacher, compilation; the saved state last,
        so the RNG continues exactly where the checkpoint left it."""
        cfg = self.cfg
        self.model = self.session.prepare_model(self.compute.model(self.core))
        optimizer = build_optimizer(self.model.parameters(), cfg)
        lr_schedule = build_lr_schedule(optimizer, cfg, len(self.feeds.train))
        teacher = load_teacher(cfg, new_model, self.compute) if cfg.distill_alpha > 0 else None
        self.step = TrainStep(compiled(self.model, cfg.compile), optimizer, self.compute, Criterion(cfg, teacher), lr_schedule)
        if saved is not None:
            if saved.optimizer is not None:
                optimizer.load_state_dict(saved.optimizer)
                lr_schedule.load_state_dict(saved.lr_scheduler)
            self.compute.load_state_dict(saved.scaler)
            _set_rng_state(saved.rng, self.device)

    def epoch(self, epoch: int) -> None:
        """Schedule, train, evaluate, report (rank 0's report carries the checkpoint)."""
        cfg, rank = self.cfg, self.session.world_rank
        schedule = self.pruning.schedule
        phase = schedule.phase(epoch) if schedule else None
        if phase is not None and phase.recompute:
            pruners.step(self.core, fraction=phase.fraction, enforce=phase.enforce)
        start = time.perf_counter()
        train_loss = train_one_epoch(self.step, self.feeds.train, epoch, cfg.print_freq, rank)
        val = evaluate(self.model, self.feeds.val, self.device, self.compute)
        self.step.lr_schedule.epoch_end()
        self.progress.train_s += time.perf_counter() - start
        self.progress.epoch = epoch
        final = schedule is None or (epoch >= schedule.final_epoch and phase.enforce)
        if final and not (val["accuracy"] <= self.progress.best_accuracy):
            self.progress.best_accuracy = val["accuracy"]
        metrics = self.metrics(epoch, train_loss, val, final)
        self.progress.history.append(metrics)
        if rank == 0:
            log.info("[Eval] Epoch=%d Acc@1=%.4f Acc@5=%.4f Loss=%.4f sparsity=%.4f%s", epoch, val["accuracy"] * 100,
                     val["top5"] * 100, val["val_loss"], metrics["sparsity"], "" if final else " (not final)")  # fmt: skip
        self.session.report(metrics, self.checkpoint(metrics) if rank == 0 else None, epoch)

    def metrics(self, epoch: int, train_loss: float, val: dict[str, float], final: bool) -> dict[str, Any]:
        cfg, rank, world = self.cfg, self.session.world_rank, self.session.world_size
        figures = pruners.sparsity_report(self.core, self.example.to(self.device))
        metrics = {
            "epoch": epoch, "train_loss": train_loss, **val, "final": bool(final),
            # Checkpoints are ranked on this: epochs before the final sparsity never win.
            "score": val["accuracy"] if final else -1.0,
            "best_accuracy": self.progress.best_accuracy, "lr": self.step.optimizer.param_groups[0]["lr"],
            "train_s": self.progress.train_s, "world_size": world,
            # max - min over ranks of sum|w|: exactly 0 when DDP keeps every rank identical.
            "rank_weight_spread": _spread(rank_checksums(self.core, world, self.device)),
            "node_id": self.session.node_id() if rank == 0 else "",
            **{k: figures[k] for k in REPORTED_FIGURES if k in figures},
            "method": cfg.method or "dense", "schedule": cfg.schedule if cfg.method else "",
            "precision": cfg.precision, "distill_alpha": cfg.distill_alpha, "distill_temperature": cfg.distill_temperature,
            **self.pruning.columns,
        }  # fmt: skip
        if cfg.measure_latency:
            # Every report carries every objective (Tune's searcher refuses one without them):
            # measured after the last epoch, NaN before it.
            last = rank == 0 and epoch == cfg.epochs - 1
            metrics.update(_latency(self.core, self.input_size, cfg) if last else dict.fromkeys(LATENCY_FIGURES, math.nan))
        return metrics

    def checkpoint(self, metrics: dict[str, Any]) -> Checkpoint:
        return Checkpoint(
            model=self.core.state_dict(), config=self.cfg.to_dict(), epoch=self.progress.epoch, metrics=metrics,
            history=self.progress.history, best_accuracy=self.progress.best_accuracy, train_s=self.progress.train_s,
            layers=[_plain(row) for row in pruners.layer_table(self.core, self.example)],
            optimizer=self.step.optimizer.state_dict(), lr_scheduler=self.step.lr_schedule.state_dict(),
            nm_permute_gain=self.pruning.nm_permute_gain, scaler=self.compute.state_dict(), rng=_rng_state(self.device),
        )  # fmt: skip


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The global torch RNGs after an epoch (dropout and any random op in a model draw from them)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Optional[dict[str, torch.Tensor]], device: torch.device) -> None:
    if not state:  # a checkpoint written before it carried the RNG: the seed's stream restarts
        return
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _spread(values: list[float]) -> float:
    return max(values) - min(values)


def _attach_run_log(run_dir: Optional[str]) -> None:
    """Rank 0 appends readable lines to ``<run dir>/run.log`` when that folder is reachable."""
    if not run_dir or not os.path.isdir(run_dir):
        return
    path = os.path.join(run_dir, "run.log")
    if any(getattr(h, "baseFilename", None) == path for h in log.handlers):
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s: %(message)s", "%m/%d %H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


LATENCY_FIGURES = ("latency_ms_b1", "latency_ms_b64", "speedup", "params_compact")


def _latency(core: nn.Module, input_size, cfg: RunConfig) -> dict[str, float]:
    """CPU latency of the compacted model (batch 1 and 64) and speedup over the same
    architecture dense, measured in this process; pure overhead, so only after the last epoch."""
    from raysweep.speed.latency import trial_latency

    try:
        figures = trial_latency(core, None, tuple(input_size), threads=max(1, int(cfg.cpus_per_worker)))
    except ValueError as exc:  # a model that cannot be compacted or timed: NaN figures, the reason once
        log.warning("latency not measured: %s", exc)
        figures = {}
    return {k: figures.get(k, math.nan) for k in LATENCY_FIGURES}


def _plain(row: dict) -> dict:
    """Rows that ``torch.load(weights_only=True)`` reads back: no torch.Size, no tensors."""
    return {k: (list(v) if isinstance(v, (tuple, torch.Size)) else v) for k, v in row.items()}
