"""How a trial's model computes: its precision, its memory format and whether it is compiled.

* ``precision`` (``PRECISIONS``): ``fp32``; ``bf16``, autocast to bfloat16 (CPU and GPU; same
  exponent range as fp32, so no loss scaling); ``fp16``, autocast to float16 with a GradScaler
  (float16's narrow range needs the loss scaled), CUDA only.
* ``channels_last``: 4-D weights and inputs in NHWC, the layout convolution kernels prefer.
* ``compile``: ``torch.compile`` of the training module (the evaluation runs it eagerly).

``Compute`` carries the first two through a step: ``autocast()``, ``input(x)``, ``backward(loss,
optimizer)`` and the GradScaler's state for checkpoints.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, ContextManager, Optional

import torch
import torch.nn as nn

log = logging.getLogger("raysweep.loop")


@dataclass(frozen=True)
class Precision:
    """One ``precision`` value: what autocast runs in, and what it needs."""

    dtype: Optional[torch.dtype]  # autocast's dtype; None: no autocast (fp32)
    scaled: bool = False  # a GradScaler scales the loss (float16 gradients underflow otherwise)
    needs_cuda: bool = False  # refused before any Ray work when a run has no CUDA GPU


PRECISIONS: dict[str, Precision] = {
    "fp32": Precision(None),
    "bf16": Precision(torch.bfloat16),
    "fp16": Precision(torch.float16, scaled=True, needs_cuda=True),
}


class PrecisionError(ValueError):
    """A precision this run cannot use; the message says what to use instead."""


def fp16_refusal(where: str) -> str:
    return (f"precision fp16 needs a CUDA GPU ({where}): it is float16 autocast with a GradScaler, which runs on "
            "CUDA only; use bf16 (works on CPU and GPU) or fp32")  # fmt: skip


def check_precision(name: str, cuda: bool, where: str = "this run has none") -> Optional[str]:
    """What is wrong with ``name`` for a run with (``cuda``) or without a CUDA GPU, or None."""
    if name not in PRECISIONS:
        return f"unknown precision {name!r} (known: {', '.join(PRECISIONS)})"
    if PRECISIONS[name].needs_cuda and not cuda:
        return fp16_refusal(where)
    return None


class Compute:
    """Autocast, memory format and loss scaling of one run on ``device``."""

    def __init__(self, precision: str, device: torch.device, channels_last: bool = False) -> None:
        problem = check_precision(precision, device.type == "cuda", f"this run trains on {device}")
        if problem:
            raise PrecisionError(problem)
        self.name, self.spec, self.device, self.channels_last = precision, PRECISIONS[precision], device, channels_last
        self.scaler = torch.amp.GradScaler(device.type) if self.spec.scaled else None

    def autocast(self) -> ContextManager:
        if self.spec.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.spec.dtype)

    def model(self, model: nn.Module) -> nn.Module:
        """The model in this memory format (before the DDP wrap: DDP's buckets follow the strides)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward and optimizer step; with a GradScaler, a step whose gradients overflowed is skipped."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> Optional[dict[str, Any]]:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: Optional[dict[str, Any]]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def compiled(model: nn.Module, enabled: bool) -> nn.Module:
    """``torch.compile(model)`` when enabled: the first steps pay for compiling (seconds to a minute)."""
    if not enabled:
        return model
    log.info("compiling the model with torch.compile")
    return torch.compile(model)
