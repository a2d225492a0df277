"""Shared by several test modules (importable because pytest puts tests/ on sys.path)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

# The digits sweeps of the tests: two methods whose per-layer targets are searched, one-epoch
# trials. Each test module sets what it is about (trials, seed, epochs, points, objectives...).
TINY_SPACE: dict[str, Any] = {
    "model": "digits_cnn",
    "dataset": "digits",
    "search": "random",
    "seed": 0,
    "epochs": 1,
    "lr": 0.01,
    "batch_size": 128,
    "methods": {
        "irregular": {"*": {"uniform": [0.3, 0.9]}, "classifier.2.weight": 0.5},
        "nm": {"*": {"choice": ["m4n2", "m8n2"]}, "features.0.weight": 0.0},
    },
    "schedules": {"oneshot": {}},
}


def tiny_space(name: str, **fields: Any) -> dict[str, Any]:
    """A tiny digits space named ``name``, with ``fields`` replacing the defaults above."""
    return {**copy.deepcopy(TINY_SPACE), "name": name, **fields}


def write_space(folder: Path, space: dict[str, Any]) -> Path:
    """``space`` as ``<folder>/<name>.yaml``; returns the file."""
    path = Path(folder) / f"{space['name']}.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics/affine and conv/linear biases, in eval mode: a wrong channel slice
    or permutation now changes the output, and dead channels pass on non-zero constants."""
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
