"""Models that look trained, for checks of exactness: a freshly built network has BatchNorm
statistics of 0 and 1, β of 0 and no biases, so a dead channel passes on exactly zero and a
wrong channel slice or permutation of a BatchNorm goes unseen. Used by raysweep's tests and
benchmarks alike, and by anyone checking a compaction of their own model."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["trained_like"]


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine, and random conv/linear biases, as after training;
    returns the model in eval mode. Dead channels then carry non-zero constants that a careless
    compaction gets wrong."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()
