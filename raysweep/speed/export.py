"""Export a pruned checkpoint as a standalone model file, physically compacted where exact.

The checkpoint (``final.pt``/``best.pt`` of a run, a run directory, a sweep trial's folder, or a
plain state dict with ``model=``) is restored into a fresh model with its masks, compacted by
``pruners.compact`` (dead channels removed, their constants folded; checked against the masked
model) and saved by raysweep.speed.program. Zeros that do not empty a whole channel (irregular,
pattern, N:M) stay in place: dense kernels gain no speed from them; for ``m4n2`` (2:4) masks
the Linear layers are also timed with NVIDIA's sparse kernels (raysweep.speed.semi_structured).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

import pruners
from pruners.compact import compact, squashed_copy, zero_weights
from raysweep.errors import first_line
from raysweep.speed.latency import measure_pair
from raysweep.speed.program import load_exported, save_model
from raysweep.speed.semi_structured import semi_structured_check
from raysweep import storage
from raysweep.trial.checkpoint import CHECKPOINT_FILE, CheckpointError, CheckpointFolder, read_weights

log = logging.getLogger("raysweep.export")


class ExportInputError(ValueError):
    """A checkpoint that cannot be exported; the CLI prints it and exits 2."""


def _head_classes(model: nn.Module, state: dict[str, Any]) -> int | None:
    """Output size of the model's last Linear as stored in ``state`` (the checkpoint's classes)."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        return None
    for key in (f"{linears[-1]}.weight", f"{linears[-1]}.parametrizations.weight.original"):
        if isinstance(state.get(key), torch.Tensor):
            return int(state[key].shape[0])
    return None


def load_checkpoint(path: str | Path, model: str | None = None, dataset: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The masked model of a raysweep checkpoint, and ``{"model", "dataset", "input_size", "path"}``.

    ``path`` is a checkpoint file, a run directory (its ``final.pt``) or a sweep trial's folder
    (``<sweep>/trials/<id>``: its newest checkpoint), local or at a storage URI. The model name and dataset come from
    ``model``/``dataset`` if given, else the checkpoint's config, else the ``config.json``
    beside it. Every problem is an ``ExportInputError``.
    """
    from raysweep.models import create_model, model_info

    path = checkpoint_path(path)
    try:
        state, checkpoint = read_weights(path)
    except CheckpointError as exc:
        raise ExportInputError(str(exc)) from None
    config = checkpoint.config if checkpoint is not None and checkpoint.config else None
    beside = storage.join(storage.parent(path), "config.json")
    if config is None and storage.is_file(beside):
        config = json.loads(storage.read_text(beside))
    config = config or {}
    name, dataset = model or config.get("model"), dataset or config.get("dataset")
    if not name:
        raise ExportInputError(f"cannot tell which model {path} holds: no config in it or beside it; pass --model (and --dataset)")
    try:
        net = create_model(name, dataset=dataset)
        classes = _head_classes(net, state)
        if classes is not None and classes != _head_classes(net, net.state_dict()):
            net = create_model(name, num_classes=classes, dataset=dataset)
        input_size = tuple(model_info(name, dataset=dataset).input_size)
    except (ValueError, FileNotFoundError) as exc:
        raise ExportInputError(first_line(exc)) from None
    try:
        pruners.load_masked_state_dict(net, state)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ExportInputError(f"checkpoint {path} does not fit model {name!r}: {first_line(exc)}") from None
    return net.eval(), {"model": name, "dataset": dataset, "input_size": input_size, "path": str(path)}


def checkpoint_path(path: storage.Location) -> storage.Location:
    """The file behind a run directory (``final.pt``), a checkpoint folder (its ``checkpoint.pt``)
    or a sweep trial's folder (its newest); any of them may be a storage URI (raysweep.storage)."""
    path = storage.location(path)
    if not storage.is_dir(path):
        return path
    for name in ("final.pt", CHECKPOINT_FILE):
        if storage.is_file(storage.join(path, name)):
            return storage.join(path, name)
    newest = CheckpointFolder(path).newest_path()
    if newest is None:
        raise ExportInputError(f"{path} holds no checkpoint: neither a run directory (final.pt) nor a sweep trial's "
                               "folder (checkpoint_epochNNNN/)")  # fmt: skip
    return newest


def _nm_targets(model: nn.Module) -> set[str]:
    return {str(wm.target) for wm in pruners.masked_parameters(model).values() if wm.method == "nm"}


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    model: str | None = None,
    dataset: str | None = None,
    do_compact: bool = True,
    fold_borders: bool = False,
    latency: bool = False,
    threads: int = 1,
) -> dict[str, Any]:
    """Load, compact, export, reload and check; returns the summary the CLI prints."""
    net, info = load_checkpoint(checkpoint, model, dataset)
    example = torch.randn((2, *info["input_size"]), generator=torch.Generator().manual_seed(0))
    nm = _nm_targets(net)
    masked = net
    report = None
    if do_compact:
        try:
            small, report = compact(net, example, fold_borders=fold_borders)
        except ValueError as exc:  # an untraceable model is still exported, zeros in place
            log.warning("%s; exporting without compaction", exc)
    if report is None:
        small = squashed_copy(net)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fmt = save_model(small, example, out)
    loaded = load_exported(out)
    with torch.no_grad():
        diff = float((loaded(example) - masked(example)).abs().max())
    total = sum(m.weight.numel() for m in small.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)))
    summary: dict[str, Any] = {
        **info, "out": str(out), "format": fmt, "max_abs_diff": diff,
        "params_masked_remaining": pruners.sparsity_report(masked)["params_remaining"],
        "params_before": sum(p.numel() for p in masked.parameters()),
        "params_after": sum(p.numel() for p in small.parameters()),
        "channels_removed": report.channels_removed if report else 0,
        "channels_dead": report.channels_dead if report else 0,
        "kept_dead": report.kept_dead if report else {},
        "bias_maps": report.bias_maps if report else [],
        "zeros_in_place": zero_weights(small), "weights_in_place": total,
    }  # fmt: skip
    if nm:
        summary["semi_structured"] = semi_structured_check(masked, info["input_size"]) if "m4n2" in nm else {
            "status": "skipped", "reason": f"N:M {sorted(nm)} is not 2:4 (m4n2), the only sparse GPU kernel"}
    if latency:
        dense = squashed_copy(masked)
        figures = measure_pair({"dense": dense, "exported": loaded}, info["input_size"], threads=threads)
        summary["latency"] = figures
        summary["speedup"] = figures["dense"]["latency_ms_b64"] / figures["exported"]["latency_ms_b64"]
    return summary
