"""How the ``channel`` method ranks the channels of a group: one score per channel, lowest removed first.

Importances live in a registry filled by a decorator. ``l1`` (the default) sums the L1 norm of
the channel's filter over every producer of the group, so a residual stream channel is judged by
all the convs that write it. ``taylor`` is first-order Taylor (Molchanov et al. 2019):
``|w * dL/dw|`` of the group's producer and follower parameters, with the gradient averaged over
a few batches.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from pruners.channel_group import ChannelGroup
from pruners.mask_register import is_parametrized
from pruners.selection import score_dtype

__all__ = ["IMPORTANCES", "Importance", "get_importance", "list_importances", "register_importance", "taylor_gradients"]

Grads = Optional[dict[str, torch.Tensor]]
ImportanceFn = Callable[[nn.Module, ChannelGroup, Grads], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Importance:
    name: str
    fn: ImportanceFn  # (model, group, gradients by parameter name or None) -> scores of shape (group.size,)
    needs_grads: bool
    doc: str = ""


IMPORTANCES: dict[str, Importance] = {}


def register_importance(name: str, *, needs_grads: bool = False) -> Callable[[ImportanceFn], ImportanceFn]:
    """Decorator: register a channel importance under ``name``."""

    def decorator(fn: ImportanceFn) -> ImportanceFn:
        IMPORTANCES[name] = Importance(name, fn, needs_grads, (fn.__doc__ or "").strip())
        return fn

    return decorator


def list_importances() -> list[str]:
    return list(IMPORTANCES)


def get_importance(name: object) -> Importance:
    """The importance called ``name``; an unknown name is a ValueError naming the nearest one."""
    key = str(name).strip().lower()
    if key in IMPORTANCES:
        return IMPORTANCES[key]
    close = difflib.get_close_matches(key, list(IMPORTANCES), n=1, cutoff=0.0)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown channel importance {name!r}{hint} (known: {', '.join(IMPORTANCES)})")


def _value(model: nn.Module, mod_name: str, tensor: str) -> torch.Tensor:
    """The tensor's value; a masked one's ``original``, which ``pruners.step`` has just hard-pruned."""
    module = model.get_submodule(mod_name)
    if is_parametrized(module, tensor):
        return module.parametrizations[tensor].original.detach()
    return getattr(module, tensor).detach()


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    return score_dtype(t).reshape(t.shape[0], -1).sum(1)


@register_importance("l1")
def l1(model: nn.Module, group: ChannelGroup, grads: Grads) -> torch.Tensor:
    """L1 norm of each channel's filter, summed over every producer of the group."""
    score = None
    for mod_name, tensor in group.producers:
        if tensor == "weight":
            w = score_dtype(_value(model, mod_name, tensor))
            s = torch.linalg.vector_norm(w.reshape(w.shape[0], -1), ord=1, dim=1)  # one pass, no |w| copy
            score = s if score is None else score + s.to(score.dtype)
    return torch.zeros(group.size) if score is None else score


@register_importance("taylor", needs_grads=True)
def taylor(model: nn.Module, group: ChannelGroup, grads: Grads) -> torch.Tensor:
    """First-order Taylor: sum of |w * dL/dw| over the group's producer and follower parameters."""
    if grads is None:
        raise ValueError("taylor importance needs gradients")
    score = torch.zeros(group.size, dtype=torch.float64)
    for mod_name, tensor in group.producers + group.followers:
        g = grads.get(f"{mod_name}.{tensor}")
        if g is None:
            continue
        s = _per_channel((_value(model, mod_name, tensor) * g).abs()).double().cpu()
        start = group.offset(mod_name, tensor) if (mod_name, tensor) in group.followers else 0
        score += s[start : start + group.size]
    return score


def _leaf(model: nn.Module, name: str) -> Optional[torch.Tensor]:
    """The trainable tensor behind ``name`` (a masked one's ``original``), or None."""
    mod_name, _, tensor = name.rpartition(".")
    module = model.get_submodule(mod_name)
    t = module.parametrizations[tensor].original if is_parametrized(module, tensor) else getattr(module, tensor, None)
    return t if isinstance(t, torch.Tensor) and t.requires_grad else None


def taylor_gradients(model: nn.Module, names: Iterable[str], data: Iterable, loss_fn: Optional[LossFn] = None) -> dict[str, torch.Tensor]:
    """Mean gradient of ``loss_fn(model(x), y)`` over the ``(x, y)`` batches of ``data``, per parameter name.

    Eval mode (BatchNorm statistics untouched), modes restored. A masked tensor's gradient is
    taken through its ``original``: zero where masked, as ``w`` is there.
    """
    loss_fn = loss_fn or F.cross_entropy
    leaves = {n: t for n in dict.fromkeys(names) if (t := _leaf(model, n)) is not None}
    if not leaves:
        return {}
    device = next(iter(leaves.values())).device
    total = {n: torch.zeros_like(t) for n, t in leaves.items()}
    modes = {m: m.training for m in model.modules()}
    model.eval()
    count = 0
    try:
        with torch.enable_grad():
            for x, y in data:
                loss = loss_fn(model(x.to(device)), y.to(device))
                for n, g in zip(leaves, torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)):
                    if g is not None:
                        total[n] += g
                count += 1
    finally:
        for m, mode in modes.items():
            m.train(mode)
    if not count:
        raise ValueError("taylor importance got no batches of data")
    return {n: g / count for n, g in total.items()}
