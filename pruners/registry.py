"""The method registry: one name -> one mask function (timm-style, filled by a decorator).

Each method keeps scoring, selection and application apart: a method scores groups of
weights, ``pruners.selection`` picks exactly ``round(ratio * groups)`` of them, and the mask
is expanded back to the weight's shape. The methods live in ``structured`` and ``patterns``
and register themselves when the package imports them; applying masks to a model lives in
``masking``.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from pruners.layout import method_shape
from pruners.plan import GraphHooks
from pruners.targets import Target, require_nm, require_ratio, validate_target

MaskFn = Callable[..., torch.Tensor]
SkipFn = Callable[[torch.Size, Target], Optional[str]]
ModelOptionsFn = Callable[[list], dict]


@dataclass(frozen=True)
class Method:
    """A pruning method: how to mask one weight, and when a layer must be left dense."""

    name: str
    mask_fn: MaskFn  # (weight, target, **options) -> BoolTensor, True = kept
    skip_fn: SkipFn  # (shape, target) -> reason the layer is left dense, or None
    aliases: tuple[str, ...] = field(default_factory=tuple)
    doc: str = ""
    # Model-wide options computed once from all weights being pruned (PatDNN's pattern
    # library is chosen across the whole model), passed to every mask_fn call as **options.
    model_options: Optional[ModelOptionsFn] = None
    takes: str = "ratio"  # the kind of target: "ratio" (in [0, 1]) or "nm" ("mXnY", or 0.0 = dense)
    # Masking whole filters empties channels: the bias and per-channel layers after a dead filter
    # are masked too (pruners.followers), so the channel outputs exactly 0.
    kills_channels: bool = False
    # A method that plans and computes the masks of a whole model from its graph; ``mask_fn``
    # is then what one weight alone gets from ``compute_mask``.
    graph: Optional[GraphHooks] = None


TARGET_KINDS = ("ratio", "nm")
METHODS: dict[str, Method] = {}
_ALIASES: dict[str, str] = {}


def _never_skip(shape: torch.Size, target: Target) -> Optional[str]:
    return None


def register_method(
    name: str,
    *,
    aliases: tuple[str, ...] = (),
    skip: SkipFn = _never_skip,
    model_options: Optional[ModelOptionsFn] = None,
    takes: str = "ratio",
    kills_channels: bool = False,
    graph: Optional[GraphHooks] = None,
) -> Callable[[MaskFn], MaskFn]:
    """Decorator: register ``fn(weight, target, **options) -> BoolTensor`` under ``name``."""
    if takes not in TARGET_KINDS:
        raise ValueError(f"takes must be one of {TARGET_KINDS}, got {takes!r}")

    def decorator(fn: MaskFn) -> MaskFn:
        doc = (fn.__doc__ or "").strip()
        METHODS[name] = Method(name, fn, skip, tuple(aliases), doc, model_options, takes, kills_channels, graph)
        _ALIASES[name] = name
        for alias in aliases:
            _ALIASES[alias] = name
        return fn

    return decorator


def list_methods() -> list[str]:
    """Canonical method names (aliases such as the reference project's ``irre_prune`` excluded)."""
    return list(METHODS)


def get_method(method: Union[str, Method]) -> Method:
    """Resolve a name, an alias or a ``Method`` itself; unknown names suggest the nearest one."""
    if isinstance(method, Method):
        return method
    if not isinstance(method, str):
        raise ValueError(f"prune method must be a name, got {method!r}")
    key = method.strip().lower()
    if key in _ALIASES:
        return METHODS[_ALIASES[key]]
    close = difflib.get_close_matches(key, list(_ALIASES), n=1, cutoff=0.0)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown prune method {method!r}{hint} (known: {', '.join(METHODS)})")


def check_target(method: Union[str, Method], target: object) -> Target:
    """``target`` checked for ``method``: well formed, and of the kind the method takes (a ratio,
    or ``mXnY`` for ``nm``); a ValueError says what is wrong."""
    m = get_method(method)
    t = validate_target(target)
    if m.takes == "nm":
        require_nm(t)
    else:
        require_ratio(m.name, t)
    return t


def skip_reason(method: Union[str, Method], shape: Union[Sequence[int], nn.Module], target: object) -> Optional[str]:
    """Why ``method`` would leave a weight dense at ``target`` (None: it prunes it).

    ``shape`` is the weight's shape as the methods see it, ``(out, in / groups, *kernel)``
    (linear: 2-D, Conv1d/2d/3d: 3- to 5-D), or the layer itself: a transposed conv stores
    ``(in, out / groups, *kernel)``, which only the module tells apart (``pruners.layout``).
    """
    m = get_method(method)
    t = validate_target(target)
    if isinstance(shape, nn.Module):
        shape = method_shape(shape)
    if len(shape) < 2:
        raise ValueError(
            f"method {m.name!r} prunes conv (3- to 5-D) and linear (2-D) weights; got a {len(shape)}-D weight {tuple(shape)}"
        )
    return m.skip_fn(torch.Size(shape), t)


def compute_mask(
    method: Union[str, Method], weight: torch.Tensor, target: object, **options: object
) -> torch.Tensor:
    """Boolean mask (True = kept) of ``weight``'s shape; ``weight`` itself is never modified.

    ``target`` is the ratio of weights removed in [0, 1] (an exact count of groups), or
    ``"mXnY"`` for M:N. A layer the method cannot prune (see ``skip_reason``) gets an all-True mask.
    ``weight`` is in the methods' layout ``(out, in / groups, *kernel)``; ``pruners.prepare``
    hands a transposed conv's weight over through ``pruners.layout``.
    """
    m = get_method(method)
    t = validate_target(target)
    if skip_reason(m, weight.shape, t) is not None:
        return torch.ones_like(weight, dtype=torch.bool)
    with torch.no_grad():
        mask = m.mask_fn(weight.detach(), t, **options)
    return mask.to(dtype=torch.bool, device=weight.device)

