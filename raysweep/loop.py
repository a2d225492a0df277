"""The per-worker training loop that Ray Train runs in every DDP rank.

One function serves ``raysweep.train``, ``raysweep.prune`` and every sweep trial: build the
data and model, load starting weights, attach masks (before the DDP wrap), then per epoch
apply the schedule, train, evaluate, and report metrics with a checkpoint.
"""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

import pruners
from pruners.allocation import resolve_allocation
from raysweep.config import RunConfig
from raysweep.data import build_datasets
from raysweep.models import create_model
from raysweep.session import CHECKPOINT_FILE, LoopSession, TrainSession

log = logging.getLogger("raysweep.loop")

__all__ = ["CHECKPOINT_FILE", "load_weights", "run_loop", "train_loop_per_worker"]


def load_weights(model: nn.Module, path: str) -> None:
    """Load starting weights: a plain state dict, a raysweep checkpoint, masked or not.

    Masked checkpoints (from an earlier prune) are squashed to plain weights with their zeros,
    so the new run's masks start from them.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(".parametrizations." in k for k in state):
        pruners.load_masked_state_dict(model, state)
        pruners.squash(model)
    else:
        model.load_state_dict(state)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _all_reduce(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def rank_checksums(model: nn.Module, world: int, device) -> list[float]:
    """Every rank's sum of |weights|: equal entries show the DDP ranks hold identical weights."""
    tensors = [t for t in model.state_dict().values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    total = torch.tensor([sum(t.detach().double().abs().sum().item() for t in tensors)], dtype=torch.float64, device=device)
    if world == 1:
        return total.tolist()
    gathered = [torch.zeros_like(total) for _ in range(world)]
    dist.all_gather(gathered, total)
    return [g.item() for g in gathered]


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


def _spread(values: list[float]) -> float:
    return max(values) - min(values)


def evaluate(model: nn.Module, val_ds, batch_size: int, rank: int, world: int, device) -> dict:
    """Top-1/top-5/loss over the whole val set, each rank scoring a disjoint stride (exact)."""
    shard = Subset(val_ds, range(rank, len(val_ds), world))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False)
    model.eval()
    correct1 = correct5 = loss_sum = count = 0.0
    # cached(): each masked weight is computed once for the whole evaluation, not per batch.
    with torch.no_grad(), torch.nn.utils.parametrize.cached():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss_sum += nn.functional.cross_entropy(out, y, reduction="sum").item()
            top = out.topk(min(5, out.shape[1]), dim=1).indices
            correct1 += (top[:, 0] == y).sum().item()
            correct5 += (top == y[:, None]).any(dim=1).sum().item()
            count += len(y)
    correct1, correct5, loss_sum, count = _all_reduce([correct1, correct5, loss_sum, count], device)
    return {"accuracy": correct1 / count, "top5": correct5 / count, "val_loss": loss_sum / count}


def train_one_epoch(model, loader, optimizer, device, epoch: int, print_freq: int, rank: int) -> float:
    """One pass; the loss stays on the device (no per-batch sync) and is checked once at the end."""
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n = 0
    for i, (x, y) in enumerate(loader):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().double() * len(y)
        n += len(y)
        if rank == 0 and print_freq and i % print_freq == 0:
            lr = optimizer.param_groups[0]["lr"]
            log.info("Training Epoch: %d [%d/%d]\tLoss: %.4f\tLR: %.6f", epoch, i, len(loader), loss.item(), lr)
    mean = loss_sum.item() / max(n, 1)
    if not math.isfinite(mean):
        raise FloatingPointError(f"training loss became {mean} in epoch {epoch}")
    return mean


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


def quiet_report_lines() -> None:
    """Ray Train logs every report with all its metrics at INFO under a logger named after its
    file path, which ``LoggingConfig`` does not reach; it would drown the epoch lines."""
    from ray.train.v2._internal.execution import context as train_context

    level = os.environ.get("RAYSWEEP_TRAIN_LOG_LEVEL", "WARNING").upper()
    logging.getLogger(train_context.__file__).setLevel(level)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry point: the loop in one rank of the worker group."""
    quiet_report_lines()
    run_loop(config, TrainSession())


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

    schedule = pruners.get_schedule(cfg.schedule, **cfg.schedule_params) if cfg.method else None
    saved = session.resume_payload()  # the checkpoint to continue from, applied once masks exist
    ratios: dict[str, Any] = {}
    if cfg.method:
        if cfg.allocation:
            # Weight-ranked families (lamp, global_magnitude) need the loaded dense weights.
            cfg.targets = resolve_allocation(model, cfg.method, cfg.targets, cfg.allocation)
            ratios.update(allocation=cfg.allocation["family"], global_target=cfg.allocation["target"])
        if cfg.nm_permute and cfg.method == "nm":
            # A resumed run's checkpoint holds the permuted weights already: no second search.
            gain = saved["metrics"].get("nm_permute_gain") if saved is not None else None
            ratios["nm_permute_gain"] = _permute_for_nm(model, cfg, example, rank) if gain is None else gain
        # The per-parameter targets travel with every report: the sweep's ratio/<param> columns.
        resolved = pruners.resolve_targets(model, cfg.targets)
        ratios.update({f"ratio/{k}": v for k, v in resolved.items()})
        ratios["target_sparsity"] = target_sparsity(model, resolved)
        report = pruners.prepare(model, cfg.targets, cfg.method, fraction=0.0, enforce=True)
        if rank == 0 and report.skipped:
            for name, reason in report.skipped.items():
                log.warning("%s left dense: %s", name, reason)

    # Carried in every checkpoint, so a restarted or resumed run keeps its whole history.
    state: dict[str, Any] = {"epoch": -1, "best_accuracy": float("nan"), "train_s": 0.0, "history": []}
    if saved is not None:
        model.load_state_dict(saved["model"])
        state.update({k: saved[k] for k in state})
        if rank == 0:
            log.info("resumed from the checkpoint of epoch %d", state["epoch"])

    if cfg.sync_bn and world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = session.prepare_model(model)
    core = unwrap(model)

    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wd)
    lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.lr_decay_milestones), gamma=0.1)
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        lr_scheduler.load_state_dict(saved["lr_scheduler"])

    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    per_worker_batch = max(1, cfg.batch_size // world)
    loader = DataLoader(train_ds, batch_size=per_worker_batch, sampler=sampler)
    loader = session.prepare_data_loader(loader)

    if saved is not None and state["epoch"] + 1 >= cfg.epochs:
        # Restarted after its last epoch (e.g. a resumed sweep whose driver died before
        # seeing this report): report the final metrics again so the caller gets them.
        session.report(saved["metrics"], None, state["epoch"])
        return
    for epoch in range(state["epoch"] + 1, cfg.epochs):
        phase = schedule.phase(epoch) if schedule else None
        if phase is not None and phase.recompute:
            pruners.step(core, fraction=phase.fraction, enforce=phase.enforce)
        sampler.set_epoch(epoch)
        start = time.perf_counter()
        train_loss = train_one_epoch(model, loader, optimizer, device, epoch, cfg.print_freq, rank)
        val = evaluate(model, val_ds, per_worker_batch, rank, world, device)
        lr_scheduler.step()
        state["train_s"] += time.perf_counter() - start
        state["epoch"] = epoch

        final = schedule is None or (epoch >= schedule.final_epoch and phase.enforce)
        if final and not (val["accuracy"] <= state["best_accuracy"]):
            state["best_accuracy"] = val["accuracy"]
        figures = pruners.sparsity_report(core, example.to(device))
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss,
            **val,
            "final": bool(final),
            # Checkpoints are ranked on this: epochs before the final sparsity never win.
            "score": val["accuracy"] if final else -1.0,
            "best_accuracy": state["best_accuracy"],
            "lr": optimizer.param_groups[0]["lr"],
            "train_s": state["train_s"],
            "world_size": world,
            # max - min over ranks of sum|w|: exactly 0 when DDP keeps every rank identical.
            "rank_weight_spread": _spread(rank_checksums(core, world, device)),
            "node_id": session.node_id() if rank == 0 else "",
            **{k: figures[k] for k in _REPORTED_FIGURES if k in figures},
            "method": cfg.method or "dense",
            "schedule": cfg.schedule if cfg.method else "",
            **ratios,
        }
        if cfg.measure_latency and rank == 0 and epoch == cfg.epochs - 1:
            metrics.update(_latency(core, info.input_size, cfg))
        state["history"].append(metrics)
        if rank == 0:
            log.info(
                "[Eval] Epoch=%d Acc@1=%.4f Acc@5=%.4f Loss=%.4f sparsity=%.4f%s",
                epoch, val["accuracy"] * 100, val["top5"] * 100, val["val_loss"], figures["sparsity"],
                "" if final else " (not final)",
            )
        payload = None
        if rank == 0:
            payload = {
                "model": core.state_dict(),
                "optimizer": optimizer.state_dict(),
                "lr_scheduler": lr_scheduler.state_dict(),
                "config": cfg.to_dict(),
                "metrics": metrics,
                "layers": [_plain(row) for row in pruners.layer_table(core, example)],
                **state,
            }
        session.report(metrics, payload, epoch)


_REPORTED_FIGURES = (
    "sparsity", "sparsity_conv", "sparsity_seed", "params_total", "params_remaining",
    "macs_dense", "macs_remaining", "flops_ratio",
)


def _permute_for_nm(model: nn.Module, cfg: RunConfig, example: torch.Tensor, rank: int) -> float:
    """Reorder input channels (and their producers) so N:M keeps more |w|; same function.

    Bounded by rounds, not time, so every DDP rank computes the same permutation."""
    from pruners.nm_permute import permute_for_nm

    found = permute_for_nm(model, cfg.targets, example, time_budget_s=None, seed=cfg.seed)
    if rank == 0:
        log.info("N:M channel permutation: retained magnitude %+.2f%% (%d groups, %.1f s)",
                 100 * found.gain, len(found.groups), found.seconds)
        for name, why in found.skipped.items():
            log.info("  %s not permuted: %s", name, why)
    return found.gain


def _latency(core: nn.Module, input_size, cfg: RunConfig) -> dict[str, float]:
    """CPU latency of the compacted model (batch 1 and 64) and speedup over the same
    architecture dense, measured in this process; pure overhead, so only after the last epoch."""
    from raysweep.latency import trial_latency

    try:
        figures = trial_latency(core, None, tuple(input_size), threads=max(1, int(cfg.cpus_per_worker)))
    except ValueError as exc:  # a model torch.fx cannot trace: no compaction, no figures
        log.warning("latency not measured: %s", exc)
        return {}
    return {k: figures[k] for k in ("latency_ms_b1", "latency_ms_b64", "speedup", "params_compact")}


def _plain(row: dict) -> dict:
    """Rows that ``torch.load(weights_only=True)`` reads back: no torch.Size, no tensors."""
    return {k: (list(v) if isinstance(v, (tuple, torch.Size)) else v) for k, v in row.items()}
