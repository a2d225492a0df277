"""A model as a file plain torch loads: ``torch.export`` with a free batch dimension, and
TorchScript where ``torch.export`` cannot capture the model."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from raysweep.errors import first_line

log = logging.getLogger("raysweep.export")

MAX_BATCH = 1 << 16  # the exported program accepts batches 1..MAX_BATCH



def export_program(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` (eval) with a free batch dimension (1..MAX_BATCH)."""
    example = example[:1].expand(2, *example.shape[1:]).contiguous() if example.shape[0] < 2 else example
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))


def save_model(model: nn.Module, example: torch.Tensor, out: str | Path) -> str:
    """Save ``model`` to ``out`` with ``torch.export``, else TorchScript; returns the format used.

    The fallback scripts the model (control flow kept); only if scripting fails too does it
    trace, which freezes data-dependent branches to the example's path (logged).
    """
    try:
        torch.export.save(export_program(model, example), str(out))
        return "torch.export"
    except Exception as exc:  # noqa: BLE001 -- any capture failure falls back to TorchScript
        log.warning("torch.export failed (%s); saving TorchScript instead", first_line(exc))
    try:
        scripted = torch.jit.script(model.eval())
    except Exception as exc:  # noqa: BLE001 -- unscriptable Python: trace instead
        log.warning("torch.jit.script failed (%s); tracing: data-dependent branches follow the example", first_line(exc))
        with torch.no_grad():
            scripted = torch.jit.trace(model.eval(), example)
    torch.jit.save(scripted, str(out))
    return "torchscript"


def load_exported(path: str | Path) -> nn.Module:
    """The runnable module of an exported file, whichever format ``save_model`` chose."""
    try:
        return torch.export.load(str(path)).module()
    except Exception:  # noqa: BLE001 -- not a torch.export archive: the TorchScript fallback
        return torch.jit.load(str(path))
