"""The training loss: cross-entropy (with label smoothing), plus distillation from the dense model.

Knowledge distillation (Hinton et al. 2015): the pruned student also matches the dense
teacher's softened outputs,

    loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

(T^2 keeps the soft term's gradients on the scale of the hard one's). The teacher is the run's
starting weights (``RunConfig.weight_file``: a sweep's dense model, a prune run's
``--weight_file``), loaded once per trial, in eval mode, on the trial's device, without gradients.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from raysweep.config import RunConfig
from raysweep.trial.precision import Compute

log = logging.getLogger("raysweep.loop")


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, alpha: float,
                      temperature: float, label_smoothing: float = 0.0) -> torch.Tensor:  # fmt: skip
    """The mixed loss above, averaged over the batch (KL as ``batchmean``: per sample, as CE)."""
    hard = F.cross_entropy(student, targets, label_smoothing=label_smoothing)
    if alpha == 0.0:
        return hard
    soft = F.kl_div(F.log_softmax(student / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1),
                    reduction="batchmean", log_target=True)  # fmt: skip
    return (1.0 - alpha) * hard + alpha * temperature**2 * soft


def load_teacher(cfg: RunConfig, model_factory, compute: Compute) -> nn.Module:
    """The dense model of ``cfg.weight_file`` (masks squashed, if any), frozen, on the device."""
    from raysweep.trial.checkpoint import load_weights

    if not cfg.weight_file:
        raise ValueError("distillation needs a teacher: the dense weights (--weight_file; a sweep passes its dense model)")
    teacher = model_factory()
    load_weights(teacher, cfg.weight_file)
    teacher = compute.model(teacher.to(compute.device)).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class Criterion:
    """The loss of one batch: ``criterion(logits, x, y)``; ``x`` feeds the teacher when there is one."""

    def __init__(self, cfg: RunConfig, teacher: Optional[nn.Module] = None) -> None:
        self.alpha, self.temperature, self.label_smoothing = cfg.distill_alpha, cfg.distill_temperature, cfg.label_smoothing
        self.teacher = teacher if self.alpha > 0 else None

    def __call__(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            soft = self.teacher(x)
        return distillation_loss(logits.float(), soft.float(), y, self.alpha, self.temperature, self.label_smoothing)
