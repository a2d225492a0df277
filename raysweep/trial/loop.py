"""The training loop every rank runs: one function for ``raysweep.train``, ``raysweep.prune``
and every sweep trial, whichever session (raysweep.trial.sessions) it runs in.

``run_loop`` reads as the steps of a run: data and model, starting weights, pruning (allocation,
N:M permutation, masks -- before the DDP wrap), the resumed state, DDP, optimizer, loader, then
per epoch the schedule, a pass of SGD, evaluation, and a report with a checkpoint.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler

import pruners
from pruners.allocation import resolve_allocation
from raysweep.config import RunConfig
from raysweep.data import build_datasets
from raysweep.models import create_model
from raysweep.trial.checkpoint import Checkpoint, load_weights
from raysweep.trial.epoch import evaluate, rank_checksums, train_one_epoch
from raysweep.trial.sessions import LoopSession

log = logging.getLogger("raysweep.loop")

REPORTED_FIGURES = (
    "sparsity", "sparsity_conv", "sparsity_seed", "params_total", "params_remaining",
    "macs_dense", "macs_remaining", "flops_ratio",
)  # fmt: skip


@dataclass
class Pruning:
    """What a run's pruning set up: its schedule, and the columns every report carries
    (allocation, ``ratio/<param>``, ``target_sparsity``, ``nm_permute_gain``)."""

    schedule: Any = None  # a pruners schedule; None for plain training
    columns: dict[str, Any] = field(default_factory=dict)
    nm_permute_gain: Optional[float] = None


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

    train_ds, val_ds, info = build_datasets(cfg.dataset, cfg.data_root)
    model = create_model(cfg.model, num_classes=info.num_classes, dataset=cfg.dataset, pretrained=cfg.pretrained)
    if cfg.weight_file:
        load_weights(model, cfg.weight_file)
    example = torch.zeros((1, *info.input_size))
    saved = session.resume_state()  # applied once the masks exist
    pruning = set_up_pruning(model, cfg, example, rank, saved)
    progress = Progress.resumed(saved)
    if saved is not None:
        model.load_state_dict(saved.model)
        if rank == 0:
            log.info("resumed from the checkpoint of epoch %d", progress.epoch)

    if cfg.sync_bn and world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = session.prepare_model(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wd)
    lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.lr_decay_milestones), gamma=0.1)
    if saved is not None and saved.optimizer is not None:
        optimizer.load_state_dict(saved.optimizer)
        lr_scheduler.load_state_dict(saved.lr_scheduler)
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    loader = session.prepare_data_loader(DataLoader(train_ds, batch_size=per_worker_batch(cfg, world), sampler=sampler))

    if saved is not None and progress.epoch + 1 >= cfg.epochs:
        # Restarted after its last epoch (e.g. a resumed sweep whose driver died before
        # seeing this report): report the final metrics again so the caller gets them.
        session.report(saved.metrics, None, progress.epoch)
        return
    run = _Run(cfg, session, model, optimizer, lr_scheduler, loader, sampler, val_ds, example, tuple(info.input_size), device, pruning, progress)
    for epoch in range(progress.epoch + 1, cfg.epochs):
        run.epoch(epoch)


def per_worker_batch(cfg: RunConfig, world: int) -> int:
    return max(1, cfg.batch_size // world)


def set_up_pruning(model: nn.Module, cfg: RunConfig, example: torch.Tensor, rank: int, saved: Optional[Checkpoint]) -> Pruning:
    """Per-layer targets (an allocation resolved on the loaded weights), the N:M permutation,
    and the masks, attached dense (fraction 0) for the schedule to fill."""
    if not cfg.method:
        return Pruning()
    pruning = Pruning(schedule=pruners.get_schedule(cfg.schedule, **cfg.schedule_params))
    if cfg.allocation:
        # Weight-ranked families (lamp, global_magnitude) need the loaded dense weights.
        cfg.targets = resolve_allocation(model, cfg.method, cfg.targets, cfg.allocation)
        pruning.columns.update(allocation=cfg.allocation["family"], global_target=cfg.allocation["target"])
    if cfg.nm_permute and cfg.method == "nm":
        gain = saved.nm_permute_gain if saved is not None else None
        pruning.nm_permute_gain = _permute_for_nm(model, cfg, example, rank) if gain is None else gain
        pruning.columns["nm_permute_gain"] = pruning.nm_permute_gain
    resolved = pruners.resolve_targets(model, cfg.targets)
    pruning.columns.update({f"ratio/{k}": v for k, v in resolved.items()})
    pruning.columns["target_sparsity"] = target_sparsity(model, resolved)
    report = pruners.prepare(model, cfg.targets, cfg.method, fraction=0.0, enforce=True)
    if rank == 0:
        for name, reason in report.skipped.items():
            log.warning("%s left dense: %s", name, reason)
    return pruning


def target_sparsity(model: nn.Module, targets: dict[str, Any]) -> float:
    """The prunable-weight sparsity the targets ask for (M:N as 1 - N/M), for progress tables."""
    params = dict(model.named_parameters())
    total = removed = 0.0
    for name in pruners.prunable_parameters(model):
        numel = params[name].numel()
        total += numel
        target = targets.get(name, 0.0)
        if isinstance(target, str):
            m, n = pruners.parse_nm(target)
            removed += numel * (1 - n / m)
        else:
            removed += pruners.selection.count_for_ratio(float(target), numel)
    return removed / total if total else 0.0


@dataclass
class _Run:
    """Everything an epoch needs, built once by ``run_loop``."""

    cfg: RunConfig
    session: LoopSession
    model: nn.Module  # as the session prepared it (DDP-wrapped with several ranks)
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    loader: Any
    sampler: DistributedSampler
    val_ds: Any
    example: torch.Tensor
    input_size: tuple[int, ...]
    device: torch.device
    pruning: Pruning
    progress: Progress

    @property
    def core(self) -> nn.Module:
        return self.model.module if isinstance(self.model, nn.parallel.DistributedDataParallel) else self.model

    def epoch(self, epoch: int) -> None:
        """Schedule, train, evaluate, report (rank 0's report carries the checkpoint)."""
        cfg, rank, world = self.cfg, self.session.world_rank, self.session.world_size
        schedule = self.pruning.schedule
        phase = schedule.phase(epoch) if schedule else None
        if phase is not None and phase.recompute:
            pruners.step(self.core, fraction=phase.fraction, enforce=phase.enforce)
        self.sampler.set_epoch(epoch)
        start = time.perf_counter()
        train_loss = train_one_epoch(self.model, self.loader, self.optimizer, self.device, epoch, cfg.print_freq, rank)
        val = evaluate(self.model, self.val_ds, per_worker_batch(cfg, world), rank, world, self.device)
        self.lr_scheduler.step()
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
            "best_accuracy": self.progress.best_accuracy, "lr": self.optimizer.param_groups[0]["lr"],
            "train_s": self.progress.train_s, "world_size": world,
            # max - min over ranks of sum|w|: exactly 0 when DDP keeps every rank identical.
            "rank_weight_spread": _spread(rank_checksums(self.core, world, self.device)),
            "node_id": self.session.node_id() if rank == 0 else "",
            **{k: figures[k] for k in REPORTED_FIGURES if k in figures},
            "method": cfg.method or "dense", "schedule": cfg.schedule if cfg.method else "",
            **self.pruning.columns,
        }  # fmt: skip
        if cfg.measure_latency and rank == 0 and epoch == cfg.epochs - 1:
            metrics.update(_latency(self.core, self.input_size, cfg))
        return metrics

    def checkpoint(self, metrics: dict[str, Any]) -> Checkpoint:
        return Checkpoint(
            model=self.core.state_dict(), config=self.cfg.to_dict(), epoch=self.progress.epoch, metrics=metrics,
            history=self.progress.history, best_accuracy=self.progress.best_accuracy, train_s=self.progress.train_s,
            layers=[_plain(row) for row in pruners.layer_table(self.core, self.example)],
            optimizer=self.optimizer.state_dict(), lr_scheduler=self.lr_scheduler.state_dict(),
            nm_permute_gain=self.pruning.nm_permute_gain,
        )  # fmt: skip


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


def _permute_for_nm(model: nn.Module, cfg: RunConfig, example: torch.Tensor, rank: int) -> float:
    """Reorder input channels (and their producers) so N:M keeps more |w|; same function.

    Bounded by rounds, not time, so every DDP rank computes the same permutation."""
    from pruners.nm_permute import permute_for_nm

    found = permute_for_nm(model, cfg.targets, example, time_budget_s=None, seed=cfg.seed)
    if rank == 0:
        log.info("N:M channel permutation: retained magnitude %+.2f%% (%d groups, %.1f s)",
                 100 * found.gain, len(found.groups), found.seconds)  # fmt: skip
        for name, why in found.skipped.items():
            log.info("  %s not permuted: %s", name, why)
    return found.gain


def _latency(core: nn.Module, input_size, cfg: RunConfig) -> dict[str, float]:
    """CPU latency of the compacted model (batch 1 and 64) and speedup over the same
    architecture dense, measured in this process; pure overhead, so only after the last epoch."""
    from raysweep.speed.latency import trial_latency

    try:
        figures = trial_latency(core, None, tuple(input_size), threads=max(1, int(cfg.cpus_per_worker)))
    except ValueError as exc:  # a model torch.fx cannot trace: no compaction, no figures
        log.warning("latency not measured: %s", exc)
        return {}
    return {k: figures[k] for k in ("latency_ms_b1", "latency_ms_b64", "speedup", "params_compact")}


def _plain(row: dict) -> dict:
    """Rows that ``torch.load(weights_only=True)`` reads back: no torch.Size, no tensors."""
    return {k: (list(v) if isinstance(v, (tuple, torch.Size)) else v) for k, v in row.items()}
