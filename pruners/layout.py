"""The layout the methods define their masks on: ``(out, in / groups, *kernel)``, whatever a layer stores.

Conv (1-, 2-, 3-D) and Linear weights are stored that way already. A transposed conv stores
``(in, out / groups, *kernel)``: its filters (one per output channel) lie along dim 1 within each
group, so filter pruning on the raw tensor would remove *input* channels and N:M would group
*output* channels. ``layout_of(module).view(weight)`` is the methods' view of a weight and
``unview`` puts a mask computed on it back; masks are always stored in the layer's own layout.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LAYOUTS", "Layout", "layout_of", "method_shape", "out_channels"]


@dataclass(frozen=True)
class Layout:
    """How a layer stores its weight. ``transposed_groups`` > 0: a transposed conv with that many groups."""

    transposed_groups: int = 0

    @property
    def transposed(self) -> bool:
        return self.transposed_groups > 0

    def shape(self, shape: Sequence[int]) -> torch.Size:
        """The shape of ``view`` of a tensor of ``shape``."""
        shape = torch.Size(shape)
        if not self.transposed:
            return shape
        g = self.transposed_groups
        return torch.Size((shape[1] * g, shape[0] // g, *shape[2:]))

    def view(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` as ``(out, in / groups, *kernel)``: a transposed conv's (in, out/g, *k) regrouped."""
        if not self.transposed:
            return t
        g, (i, o), k = self.transposed_groups, t.shape[:2], t.shape[2:]
        return t.reshape(g, i // g, o, *k).transpose(1, 2).reshape(g * o, i // g, *k)

    def unview(self, t: torch.Tensor) -> torch.Tensor:
        """The inverse of ``view``: a mask in the methods' layout back in the layer's own."""
        if not self.transposed:
            return t
        g, (o, i), k = self.transposed_groups, t.shape[:2], t.shape[2:]
        return t.reshape(g, o // g, i, *k).transpose(1, 2).reshape(g * i, o // g, *k)


PLAIN = Layout()

# Module class -> its weight's layout; the first isinstance match wins (a registry, not a chain).
LAYOUTS: dict[type, Callable[[nn.Module], Layout]] = {
    nn.modules.conv._ConvTransposeNd: lambda m: Layout(transposed_groups=int(m.groups)),
}


def layout_of(module: nn.Module | None, tensor: str = "weight") -> Layout:
    """The layout of ``module.<tensor>``; anything but a registered module's weight is plain."""
    if module is None or tensor != "weight":
        return PLAIN
    for cls, make in LAYOUTS.items():
        if isinstance(module, cls):
            return make(module)
    return PLAIN


def method_shape(module: nn.Module) -> torch.Size:
    """``module.weight``'s shape as the methods see it (``Layout.shape``)."""
    return layout_of(module).shape(module.weight.shape)


def out_channels(module: nn.Module) -> int:
    """How many output channels (filters) ``module`` has: dim 0 of the methods' view of its weight."""
    return int(method_shape(module)[0])
