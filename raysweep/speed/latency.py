"""CPU inference latency, measured the same way for a dense model and its compact export.

Latency is the median wall time of one ``model(x)`` call on CPU, in eval mode under
``no_grad``, after warm-up calls, with the torch thread count fixed for the measurement and
restored afterwards. ``trial_latency`` compacts a masked model in memory (``pruners.compact``)
and times the dense and compact models in the same process, interleaving their calls so that a
noisy neighbour slows both alike; ``speedup`` is dense over compact at the largest batch. A model
that cannot be compacted (torch.fx cannot trace it) gets NaN figures and one warning saying why:
timing is a by-product of a trial, never a reason for it to fail.
"""
from __future__ import annotations

import copy
import logging
import math
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from raysweep.errors import first_line
from raysweep.speed.program import export_program

__all__ = ["measure_latency", "measure_pair", "skipped_figures", "trial_latency"]

log = logging.getLogger(__name__)


def _set_eval(model: nn.Module) -> dict[nn.Module, bool]:
    """Switch to eval; the training flags to restore. A ``torch.export`` module stays as exported."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
    except NotImplementedError:  # ExportedProgram.module(): its mode was fixed at export
        return {}
    return modes


@contextmanager
def _inference(models: Sequence[nn.Module], threads: int) -> Iterator[None]:
    """Eval mode, no_grad and ``threads`` torch threads; all restored on exit."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    modes = [_set_eval(model) for model in models]
    try:
        with torch.no_grad():
            yield
    finally:
        torch.set_num_threads(before)
        for saved in modes:
            for m, mode in saved.items():
                m.train(mode)


def _time_call(model: nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return (time.perf_counter() - start) * 1000.0


def _check(batch_sizes: Sequence[int], warmup: int, repeats: int, threads: int) -> None:
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be positive, got {tuple(batch_sizes)}")
    if repeats < 1 or warmup < 0 or threads < 1:
        raise ValueError(f"need repeats >= 1, warmup >= 0, threads >= 1; got {repeats}, {warmup}, {threads}")


def measure_pair(
    models: dict[str, nn.Module],
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 64),
    threads: int = 1,
    warmup: int = 3,
    repeats: int = 10,
) -> dict[str, dict[str, float]]:
    """``{name: {"latency_ms_b1": ..., "latency_ms_b64": ...}}`` for several models, calls interleaved.

    ``input_shape`` is one sample's shape, e.g. ``(3, 32, 32)``. Each repeat calls every model
    once in turn on the same random batch; the figure is the median over repeats.
    """
    _check(batch_sizes, warmup, repeats, threads)
    out: dict[str, dict[str, float]] = {name: {} for name in models}
    with _inference(list(models.values()), threads):
        for b in batch_sizes:
            x = torch.randn((int(b), *input_shape), generator=torch.Generator().manual_seed(0))
            for _ in range(warmup):
                for model in models.values():
                    model(x)
            times: dict[str, list[float]] = {name: [] for name in models}
            for _ in range(repeats):
                for name, model in models.items():
                    times[name].append(_time_call(model, x))
            for name in models:
                out[name][f"latency_ms_b{int(b)}"] = statistics.median(times[name])
    return out


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 64),
    threads: int = 1,
    warmup: int = 3,
    repeats: int = 10,
) -> dict[str, float]:
    """``{"latency_ms_b1": ..., "latency_ms_b64": ...}``: median ms per forward on CPU."""
    return measure_pair({"model": model}, input_shape, batch_sizes, threads, warmup, repeats)["model"]


def skipped_figures(batch_sizes: Sequence[int] = (1, 64)) -> dict[str, float]:
    """``trial_latency``'s keys, all NaN: what a trial records when its model could not be compacted."""
    keys = [f"{prefix}_b{int(b)}" for b in batch_sizes for prefix in ("latency_ms", "dense_latency_ms", "speedup")]
    return dict.fromkeys([*keys, "speedup", "params_compact", "channels_removed"], math.nan)


def trial_latency(
    masked_model: nn.Module,
    dense_model: nn.Module | None,
    input_shape: Sequence[int],
    *,
    batch_sizes: Sequence[int] = (1, 64),
    threads: int = 1,
    warmup: int = 2,
    repeats: int = 5,
    export: bool = False,
    fold_borders: bool = False,
) -> dict[str, float]:
    """Latency of the compacted ``masked_model`` and its speedup over ``dense_model``, on CPU.

    Returns ``latency_ms_b<B>`` (compact model), ``dense_latency_ms_b<B>``, ``speedup_b<B>``
    (dense / compact) per batch size, ``speedup`` (at the largest batch), ``params_compact``
    and ``channels_removed``. ``dense_model=None`` times the masked model's own architecture
    with its zeros in place (a dense kernel, same cost as the unpruned model). The masked model
    is not modified (models on another device are copied to CPU). ``export=True`` times the
    ``torch.export`` program instead of the compact eager module (the same aten ops; exporting
    adds 1-4 s to the call; where it cannot capture the model the eager module is timed, with a
    warning). ``fold_borders`` goes to ``pruners.compact.compact``. A model ``compact`` refuses
    (a ValueError: torch.fx cannot trace it, its traced forward fails) is not timed: every figure
    is NaN and one warning names the model and the reason.
    """
    from pruners.compact import compact, squashed_copy

    # compact() leaves the caller's model as it is (masks, mode); a model elsewhere is copied to CPU first.
    on_cpu = all(t.device.type == "cpu" for t in masked_model.parameters())
    source = masked_model if on_cpu else squashed_copy(masked_model).cpu()
    example = torch.zeros((2, *input_shape))
    try:
        small, report = compact(source, example, fold_borders=fold_borders)
    except ValueError as exc:
        log.warning("latency not measured for %s (figures NaN): %s", type(masked_model).__name__, first_line(exc))
        return skipped_figures(batch_sizes)
    if export:
        try:
            small = export_program(small, example).module()
        except Exception as exc:  # noqa: BLE001 -- torch.export refuses much user Python; the eager model runs the same ops
            log.warning("torch.export cannot capture the compact %s (%s); timing the eager module", type(masked_model).__name__, first_line(exc))
    if dense_model is None:
        dense = squashed_copy(source) if on_cpu else source
    else:
        dense = dense_model if next(dense_model.parameters()).device.type == "cpu" else copy.deepcopy(dense_model).cpu()
    figures = measure_pair({"dense": dense, "compact": small}, input_shape, batch_sizes, threads, warmup, repeats)
    out: dict[str, float] = {}
    for b in batch_sizes:
        key = f"latency_ms_b{int(b)}"
        out[key] = figures["compact"][key]
        out[f"dense_{key}"] = figures["dense"][key]
        out[f"speedup_b{int(b)}"] = figures["dense"][key] / figures["compact"][key]
    out["speedup"] = out[f"speedup_b{int(max(batch_sizes))}"]
    out["params_compact"] = float(report.params_after)
    out["channels_removed"] = float(report.channels_removed)
    log.debug("trial latency: %s", out)
    return out
