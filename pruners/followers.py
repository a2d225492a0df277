"""Masks that make a pruned channel truly dead: what follows a dead filter is masked with it.

A filter whose weights are all masked still passes on its bias; the BatchNorm after it turns that
into ``beta - gamma * mean / std``, a constant that zero padding makes position-dependent, so the
channel cannot be removed exactly. Masking the conv's bias and the per-channel tensors that only
that filter's output reaches (BatchNorm gamma/beta, a depthwise conv's filter) makes the channel
output exactly 0, in training and in eval. ``private_followers`` finds those tensors with a
shape-free ``torch.fx`` walk; ``derived_mask`` turns producers' dead rows into a follower's rows
(``follows``) or a consumer's input columns (``reads``).
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Mapping, Sequence

import torch
from torch import fx, nn

from pruners.channel_group import is_depthwise
from pruners.channel_ops import PASSTHROUGH_FUNCTIONS, PASSTHROUGH_METHODS, PASSTHROUGH_MODULES, UntraceableModel, symbolic_trace
from pruners.layout import out_channels
from pruners.plan import MaskPlan

__all__ = ["derived_mask", "follower_plan", "private_followers", "rows_alive", "unexpand"]

logger = logging.getLogger(__name__)


def _follower_tensors(m: nn.Module, width: int) -> list[str] | None:
    """The per-channel tensors of ``m`` to mask when it carries ``width`` channels (None: not a follower)."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.num_features == width:
        return [p for p in ("weight", "bias") if getattr(m, p, None) is not None]
    if is_depthwise(m) and m.out_channels == width:
        return [p for p in ("weight", "bias") if getattr(m, p) is not None]
    return None


def _walk(start: fx.Node, modules: Mapping[str, nn.Module], calls: Counter, width: int) -> list[tuple[str, str]]:
    """Per-channel tensors reached from ``start`` through per-channel ops only (no join, no consumer)."""
    found: list[tuple[str, str]] = []
    stack, seen = [start], {start}
    while stack:
        v = stack.pop()
        for u in v.users:
            if u in seen or not u.args or u.args[0] is not v:
                continue
            seen.add(u)
            if u.op == "call_module":
                m = modules[str(u.target)]
                tensors = _follower_tensors(m, width) if calls[str(u.target)] == 1 else None
                if tensors is not None:
                    found += [(str(u.target), p) for p in tensors]
                    stack.append(u)
                elif isinstance(m, PASSTHROUGH_MODULES + (nn.PReLU,)):
                    stack.append(u)
            elif u.op in ("call_function", "call_method") and (u.target in PASSTHROUGH_FUNCTIONS or u.target in PASSTHROUGH_METHODS):
                stack.append(u)
    return found


def private_followers(model: nn.Module) -> dict[str, list[tuple[str, str]]]:
    """Conv/linear module -> (module, tensor) of the per-channel layers only its output reaches.

    A module called more than once is never a follower (another call may carry live channels).
    A model ``torch.fx`` cannot trace gets no followers (its dead filters keep their constants).
    """
    try:
        graph = symbolic_trace(model)
    except UntraceableModel as exc:  # data-dependent Python: fall back to weight masks (and biases) only
        logger.info("no follower masks (BatchNorm, depthwise convs after a dead filter): %s", exc)
        return {}
    modules = dict(model.named_modules())
    calls = Counter(str(n.target) for n in graph.nodes if n.op == "call_module")
    out: dict[str, list[tuple[str, str]]] = {}
    for node in graph.nodes:
        m = modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and calls[str(node.target)] == 1:
            out[str(node.target)] = _walk(node, modules, calls, out_channels(m))
    return out


def follower_plan(model: nn.Module, pruned: Sequence[str], plan: MaskPlan) -> None:
    """Add to ``plan`` the bias and private followers of every pruned weight (``<module>.weight``)."""
    private = private_followers(model)
    for name in pruned:
        mod_name, _, pname = name.rpartition(".")
        if pname != "weight":
            continue
        module = model.get_submodule(mod_name)
        source = ((name, 0, 1),)
        if isinstance(getattr(module, "bias", None), torch.Tensor):  # one per output channel, transposed or not
            plan.follow(f"{mod_name}.bias", source)
        for fmod, fparam in private.get(mod_name, []):
            plan.follow(f"{fmod}.{fparam}", source)


def unexpand(mask: torch.Tensor) -> torch.Tensor:
    """A broadcast (``expand``-ed) mask cut back to size 1 along its broadcast dims: the same mask,
    without the elements that only repeat."""
    for d in range(mask.dim()):
        if mask.stride(d) == 0 and mask.shape[d] > 1:
            mask = mask.narrow(d, 0, 1)
    return mask


def rows_alive(mask: torch.Tensor) -> torch.Tensor:
    """Per output row (filter): whether any of its weights is kept. A uint8 max over the other dims
    (~20x faster than any()), on the mask's unrepeated elements."""
    mask = unexpand(mask)
    if mask.dim() < 2:
        return mask
    return mask.view(torch.uint8).amax(dim=tuple(range(1, mask.dim()))) > 0


def _span(length: int, alive: torch.Tensor, offset: int, block: int) -> torch.Tensor:
    """``alive`` (per channel) as a keep-vector over a dimension of ``length`` entries, from ``offset``."""
    if offset == 0 and block == 1 and alive.numel() == length:
        return alive  # the whole dimension: no copy
    keep = torch.ones(length, dtype=torch.bool, device=alive.device)
    cols = alive.repeat_interleave(block) if block > 1 else alive
    start = offset * block
    if start + cols.numel() > length:
        raise ValueError(f"a derived mask of {cols.numel()} channels at {offset} overruns a dimension of {length}")
    keep[start : start + cols.numel()] = cols
    return keep


def derived_mask(
    shape: torch.Size, module: nn.Module, tensor: str,
    follows: Sequence[tuple[torch.Tensor, int, int]], reads: Sequence[tuple[torch.Tensor, int, int]],
) -> torch.Tensor:
    """Rows killed by dead producer rows (``follows``: (alive rows, offset, 1)) and input columns
    killed by them (``reads``: (alive rows, offset, block)); a grouped conv's columns are per group.

    Broadcastable to ``shape`` (rows x columns, size 1 along kernel dims): combine it or
    ``expand`` it; it is never materialised here.
    """
    device = next((a.device for a, _, _ in [*follows, *reads]), None)
    nd = len(shape)
    rows = None
    for alive, offset, block in follows:
        span = _span(shape[0], alive, offset, block)
        rows = span if rows is None else rows & span
    if rows is None:
        rows = torch.ones(shape[0], dtype=torch.bool, device=device)
    mask = rows.view(-1, *([1] * (nd - 1)))
    grouped = isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and not is_depthwise(module)
    for alive, offset, block in reads:
        if grouped and tensor == "weight":
            g, per = module.groups, shape[1]
            group_of_row = torch.arange(shape[0], device=device) // (shape[0] // g)
            cols = _span(g * per, alive, offset, 1).view(g, per)[group_of_row]
            mask = mask & cols.view(shape[0], per, *([1] * (nd - 2)))
        else:
            mask = mask & _span(shape[1], alive, offset, block).view(1, -1, *([1] * (nd - 2)))
    return mask
