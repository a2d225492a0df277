"""A user's own model and data, outside raysweep's zoo: what ``model: tests.user_code:SmallNet``
and ``dataset: tests.user_code:digits_pair`` name in a space (importable from the repository
root, as Ray's workers are started there)."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


class SmallNet(nn.Module):
    """Not the zoo's digits_cnn: a depthwise-separable block and a two-layer head."""

    def __init__(self, num_classes: int = 10, input_size: tuple[int, int, int] = (1, 8, 8)) -> None:
        super().__init__()
        c = input_size[0]
        self.stem = nn.Conv2d(c, 16, 3, padding=1)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pointwise = nn.Conv2d(16, 32, 1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * input_size[1] * input_size[2], 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.pointwise(torch.relu(self.depthwise(x))))
        return self.head(x)


def digits_pair(root=None):
    """(train, val): the embedded digits as plain tensors, as a user's factory would return them."""
    from raysweep.data import build_datasets

    train, val, _ = build_datasets("digits", augment=False)
    return TensorDataset(*train.tensors[:2]), TensorDataset(*val.tensors[:2])
