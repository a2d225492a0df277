"""Magnitude methods: irregular, filter, stripe and N:M.

Each method scores groups of weights and leaves the choice to ``pruners.selection``, so a
ratio always removes exactly ``round(ratio * groups)`` groups (round half up), with ties
broken by index. Weights are 2-D (linear, out x in) or 3- to 5-D (Conv1d/2d/3d, out x in x
*kernel), in the methods' layout (``pruners.layout``: a transposed conv's weight is regrouped
to it first); the rank is checked by ``pruners.registry.skip_reason`` before these functions run.
"""
from __future__ import annotations

from typing import Optional

import torch

from pruners.registry import register_method
from pruners.selection import keep_largest, remove_lowest, score_dtype
from pruners.targets import Target, require_nm, require_ratio

__all__ = [
    "filter_mask",
    "irregular_mask",
    "nm_mask",
    "reject_options",
    "stripe_mask",
]


def reject_options(method: str, options: dict) -> None:
    """Unknown keyword options are a ValueError, not silently ignored."""
    if options:
        raise ValueError(f"method {method!r} takes no options, got {', '.join(sorted(options))}")


def _ratio_skip(method: str):
    """A skip function that never skips but rejects M:N targets, so ``skip_reason`` fails early."""

    def skip(shape: torch.Size, target: Target) -> Optional[str]:
        require_ratio(method, target)
        return None

    return skip


# --------------------------------------------------------------------------- irregular
@register_method("irregular", aliases=("irre_prune",), skip=_ratio_skip("irregular"))
def irregular_mask(weight: torch.Tensor, target: Target, **options: object) -> torch.Tensor:
    """Per-layer magnitude pruning (Han et al. 2015): groups are single weights, score |w|."""
    reject_options("irregular", options)
    ratio = require_ratio("irregular", target)
    scores = score_dtype(weight.abs()).reshape(-1)
    return remove_lowest(scores, ratio).reshape(weight.shape)


# --------------------------------------------------------------------------- filter
@register_method("filter", aliases=("filter_prune",), skip=_ratio_skip("filter"), kills_channels=True)
def filter_mask(weight: torch.Tensor, target: Target, **options: object) -> torch.Tensor:
    """Filter pruning (Li et al. 2017): whole output filters (dim 0) with the smallest L1 go.

    On a linear weight the filters are its rows, i.e. output neurons.
    """
    reject_options("filter", options)
    ratio = require_ratio("filter", target)
    scores = score_dtype(weight.abs()).reshape(weight.shape[0], -1).sum(dim=1)
    keep = remove_lowest(scores, ratio)
    view = (weight.shape[0],) + (1,) * (weight.dim() - 1)
    return keep.reshape(view).expand(weight.shape).clone()


# --------------------------------------------------------------------------- stripe
@register_method("stripe", aliases=("stripe_prune",), skip=_ratio_skip("stripe"), kills_channels=True)
def stripe_mask(weight: torch.Tensor, target: Target, **options: object) -> torch.Tensor:
    """Stripe pruning (Pruning Filter in Filter, Meng et al. 2020), magnitude version.

    A stripe is one (out, kh, kw) position across *all* input channels; its score is the L1
    norm over input channels, and the mask is constant across input channels. The paper's
    learned filter skeleton is not used: this is the reference project's magnitude criterion.
    A 1x1 conv has one stripe per filter, so stripe pruning equals filter pruning there; a
    linear weight is treated as a 1x1 conv (each row is one stripe). Conv1d and Conv3d
    kernels have stripes the same way: one per (out, kernel position).
    """
    reject_options("stripe", options)
    ratio = require_ratio("stripe", target)
    scores = score_dtype(weight.abs()).sum(dim=1)  # (out, *kernel); a linear's (out,)
    keep = remove_lowest(scores.reshape(-1), ratio).reshape(scores.shape)
    return keep.unsqueeze(1).expand(weight.shape).clone()


# --------------------------------------------------------------------------- N:M
def _nm_skip(shape: torch.Size, target: Target) -> Optional[str]:
    """N:M groups run along the input dimension, which must split into whole groups of X."""
    spec = require_nm(target)
    if spec is None:
        return None
    x, _ = spec
    in_dim = shape[1]
    if in_dim % x != 0:
        return f"input dimension {in_dim} is not a multiple of {x} ({target})"
    return None


def _input_last(weight: torch.Tensor) -> torch.Tensor:
    """Weight with the input dimension last: conv (out, in, *kernel) -> (out, *kernel, in)."""
    return weight.movedim(1, -1)


@register_method("nm", aliases=("mn_prune",), skip=_nm_skip, takes="nm")
def nm_mask(weight: torch.Tensor, target: Target, **options: object) -> torch.Tensor:
    """N:M sparsity as NVIDIA ASP lays it out: keep the Y largest |w| of every X consecutive
    weights along the input dimension (conv: per (out, *kernel) across input channels; linear:
    along in_features). Ties keep the lower index. ``m4n2`` is Ampere's 2:4.

    The ratio 0.0 returns a dense mask (schedules use it for "not yet pruned"). Channel
    permutations (Pool & Yu 2021) are a separate step before masking: ``pruners.nm_permute``.
    """
    reject_options("nm", options)
    spec = require_nm(target)
    if spec is None:
        return torch.ones_like(weight, dtype=torch.bool)
    x, y = spec
    reason = _nm_skip(weight.shape, target)
    if reason is not None:  # callers going through compute_mask never get here
        raise ValueError(f"method 'nm' cannot prune a weight of shape {tuple(weight.shape)}: {reason}")
    moved = _input_last(weight)
    groups = score_dtype(moved.abs()).reshape(-1, x)
    keep = keep_largest(groups, y)
    return keep.reshape(moved.shape).movedim(-1, 1).contiguous()

