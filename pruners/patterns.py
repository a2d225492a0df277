"""Pattern pruning (PatDNN, Niu et al. 2020) with connectivity pruning, for 3x3 conv kernels.

What is implemented -- PatDNN's scheme, *not* the reference project's:

* Candidates: the 56 = C(8, 3) 3x3 patterns of 4 kept entries that include the centre
  (``candidate_patterns``; order: ``itertools.combinations`` of the 8 non-centre positions
  in row-major order).
* Library: the ``size`` (default 8) candidates that are most often a kernel's best fit (the
  candidate keeping the largest L2 norm), counted over every kernel given to
  ``select_library``; count ties go to the lower candidate index. The library is returned in
  ascending candidate order. The reference project hard-codes four 5-entry patterns instead.
* Pattern step: every kernel keeps its best library pattern (largest kept L2; ties -> lower
  library index), i.e. exactly 4 of 9 weights: a sparsity of 5/9, which is the *floor* of
  pattern pruning -- any target in (0, 5/9] gives exactly 5/9.
* Connectivity step: for a target t > 5/9, ``k = round((t - 5/9) / (4/9) * n_kernels)``
  whole kernels are removed, chosen by the smallest L2 norm *after* pattern masking (what
  the kernel would still contribute), so the layer's sparsity is ``5/9 + 4/9 * k / n``.
  Target 0.0 is dense, 1.0 removes everything.

Non-3x3 convs and linear layers are left dense (``skip_reason`` says why). Everything is
vectorised: library selection ranks each kernel's 8 non-centre magnitudes (the best of the 56
candidates is the centre plus the 3 largest), and fitting the library is one
``(N, 9) @ (9, P)`` matmul of squared kernels against the pattern matrix.
"""
from __future__ import annotations

import itertools
from typing import Iterable, Optional

import torch

from pruners.registry import register_method
from pruners.selection import (
    count_for_ratio,
    keep_largest_columns,
    keep_mask_lowest_removed,
    nan_lowest,
    score_dtype,
)
from pruners.structured import reject_options
from pruners.targets import Target, require_ratio

__all__ = ["PATTERN_FLOOR", "candidate_patterns", "pattern_mask", "select_library"]

PATTERN_FLOOR = 5.0 / 9.0  # sparsity of a layer after the pattern step alone
_CENTRE = 4  # row-major index of the centre of a 3x3 kernel


def _build_candidates() -> torch.Tensor:
    others = [i for i in range(9) if i != _CENTRE]
    rows = []
    for combo in itertools.combinations(others, 3):
        flat = torch.zeros(9, dtype=torch.bool)
        flat[list(combo) + [_CENTRE]] = True
        rows.append(flat.reshape(3, 3))
    return torch.stack(rows)


_CANDIDATES = _build_candidates()


def candidate_patterns() -> torch.Tensor:
    """The 56 PatDNN candidate patterns, ``BoolTensor[56, 3, 3]`` (4 entries, centre included)."""
    return _CANDIDATES.clone()


def _is_3x3(shape: torch.Size) -> bool:
    return len(shape) == 4 and tuple(shape[2:]) == (3, 3)


def _best_fit(kernels: torch.Tensor, patterns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``kernels[N, 9]``: (index of the best of ``patterns``, L2^2 it keeps); ties -> lower index.

    Energies are summed in float64 (squares of float32 are exact there). The running maximum
    over the P library columns uses a strict ``>``, so the lower index wins a tie by
    construction rather than by ``argmax``'s implementation.
    """
    exact = torch.float32 if kernels.device.type == "mps" else torch.float64  # MPS has no float64
    sq = kernels.to(exact).square()
    flat = patterns.reshape(patterns.shape[0], 9).to(dtype=sq.dtype, device=sq.device)
    energy = (sq @ flat.T).unbind(dim=1)
    best_energy = energy[0]
    best = torch.zeros(kernels.shape[0], dtype=torch.long, device=sq.device)
    for p in range(1, len(energy)):
        better = energy[p] > best_energy
        best = torch.where(better, p, best)
        best_energy = torch.where(better, energy[p], best_energy)
    return best, best_energy


_OTHERS = [i for i in range(9) if i != _CENTRE]


def _build_code_table() -> torch.Tensor:
    """Candidate index of each 8-bit code of kept non-centre positions (-1: not a candidate)."""
    table = torch.full((256,), -1, dtype=torch.long)
    others = _CANDIDATES.reshape(-1, 9)[:, _OTHERS].long()
    bits = torch.tensor([1 << b for b in range(8)], dtype=torch.long)
    table[(others * bits).sum(dim=1)] = torch.arange(_CANDIDATES.shape[0])
    return table


_CODE_TABLE = _build_code_table()


def _best_candidate(kernels: torch.Tensor) -> torch.Tensor:
    """Index of each kernel's best-fitting candidate among all 56, without scoring all 56.

    The centre is in every candidate, so the best one keeps the 3 largest |w| of the other 8
    positions; ties keep the lower position, which is the lower candidate index because
    candidates are in ``itertools.combinations`` (lexicographic) order. Exact, unlike
    comparing 56 rounded sums.
    """
    mags = nan_lowest(score_dtype(kernels.abs()))
    keeps = keep_largest_columns([mags[:, p] for p in _OTHERS], 3)
    code = torch.zeros(kernels.shape[0], dtype=torch.long, device=kernels.device)
    for bit, keep in enumerate(keeps):
        code += keep.long() << bit
    return _CODE_TABLE.to(kernels.device)[code]


def select_library(weights: Iterable[torch.Tensor], size: int = 8) -> torch.Tensor:
    """PatDNN's library: the ``size`` candidates most often a kernel's best fit across ``weights``.

    Only 4-D weights with 3x3 kernels count (others are ignored); at least one is required.
    Count ties go to the lower candidate index; the result is in ascending candidate order.
    """
    if not 1 <= int(size) <= _CANDIDATES.shape[0]:
        raise ValueError(f"pattern library size must be in [1, {_CANDIDATES.shape[0]}], got {size}")
    counts = torch.zeros(_CANDIDATES.shape[0], dtype=torch.long)
    seen = False
    with torch.no_grad():
        for w in weights:
            if not _is_3x3(w.shape) or w.numel() == 0:
                continue
            seen = True
            best = _best_candidate(w.detach().reshape(-1, 9))
            counts += torch.bincount(best, minlength=_CANDIDATES.shape[0]).cpu()
    if not seen:
        raise ValueError("select_library needs at least one conv weight with 3x3 kernels")
    order = torch.sort(counts, descending=True, stable=True).indices[: int(size)]
    return _CANDIDATES[torch.sort(order).values].clone()


def _check_library(library: object) -> torch.Tensor:
    """A library must be ``[P, 3, 3]`` patterns of 4 entries including the centre."""
    if not isinstance(library, torch.Tensor) or library.dim() != 3 or tuple(library.shape[1:]) != (3, 3):
        got = tuple(library.shape) if isinstance(library, torch.Tensor) else type(library).__name__
        raise ValueError(f"pattern library must be a BoolTensor[P, 3, 3], got {got}")
    lib = library.to(torch.bool)
    flat = lib.reshape(lib.shape[0], 9)
    if lib.shape[0] == 0 or not bool((flat.sum(dim=1) == 4).all()) or not bool(flat[:, _CENTRE].all()):
        raise ValueError("pattern library entries must keep exactly 4 weights including the centre")
    return lib


def _pattern_skip(shape: torch.Size, target: Target) -> Optional[str]:
    """Only 3x3 conv kernels have patterns; everything else is left dense."""
    require_ratio("pattern", target)
    if _is_3x3(shape):
        return None
    kernel = tuple(shape[2:])
    what = {0: "a linear weight", 1: f"1-D kernels {kernel}"}.get(len(kernel), f"{kernel} kernels")
    return f"pattern pruning needs 3x3 kernels (got {what})"


def _model_library(weights: list) -> dict:
    """Model-wide option: one library chosen over all the 3x3 conv weights being pruned."""
    weights = [w for w in weights if _is_3x3(w.shape)]
    return {"library": select_library(weights)} if weights else {}


@register_method("pattern", aliases=("pat_prune",), skip=_pattern_skip, model_options=_model_library)
def pattern_mask(
    weight: torch.Tensor,
    target: Target,
    library: Optional[torch.Tensor] = None,
    **options: object,
) -> torch.Tensor:
    """PatDNN pattern + connectivity pruning of a 3x3 conv: 0 dense, (0, 5/9] -> exactly 5/9
    (pattern pruning's floor), above 5/9 whole kernels go by post-pattern L2, 1 -> all removed.

    ``library`` (``BoolTensor[P, 3, 3]``) defaults to one selected from this weight alone;
    pass the model-wide one (``Method.model_options``) to share patterns across layers.
    """
    reject_options("pattern", options)
    ratio = require_ratio("pattern", target)
    reason = _pattern_skip(weight.shape, target)
    if reason is not None:  # callers going through compute_mask never get here
        raise ValueError(f"method 'pattern' cannot prune a weight of shape {tuple(weight.shape)}: {reason}")
    if ratio == 0.0 or weight.numel() == 0:
        return torch.ones_like(weight, dtype=torch.bool)
    if ratio >= 1.0:
        return torch.zeros_like(weight, dtype=torch.bool)
    lib = _check_library(select_library([weight]) if library is None else library).to(weight.device)
    kernels = weight.reshape(-1, 9)
    best, kept_energy = _best_fit(kernels, lib)
    mask = lib.reshape(lib.shape[0], 9)[best]  # (N, 9)
    if ratio > PATTERN_FLOOR:
        fraction = min((ratio - PATTERN_FLOOR) / (1.0 - PATTERN_FLOOR), 1.0)
        k = count_for_ratio(fraction, kernels.shape[0])
        mask = mask & keep_mask_lowest_removed(kept_energy, k).unsqueeze(1)
    return mask.reshape(weight.shape)
