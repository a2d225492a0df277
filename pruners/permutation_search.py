"""Search a permutation of input channels that raises the magnitude N:M keeps (Pool & Yu 2021).

N:M (``pruners.structured.nm_mask``) keeps the N largest |w| of every M consecutive weights along
the input dimension: a conv per (out, kh, kw) across input channels, a linear along
in_features. Which channels share a group is an accident of channel order; reordering the
input channels (and the producer's output channels to match, see ``pruners.nm_permute``)
leaves the network's function unchanged and lets better groups be formed.

The search is Pool & Yu's channel-swap local search: start from the identity and repeatedly
apply the best-improving swap of two channels in different groups. At a local optimum it
escapes: a few random swaps from the best permutation found (layers of at most ``window``
channels), or a new random window of ``window`` channels searched on its own (wider layers),
until a per-layer time budget or a number of rounds is spent. Only the best permutation seen
is kept, so the result is never worse than the identity.

Cost. ``D[a, c]`` is the change of ``a``'s group's retained magnitude if ``c`` replaced ``a``;
a swap's gain is ``D[a, c] + D[c, a]``. Dropping one member of a group leaves, per row, its
top N-1 and its N-th value, which take one of two values per row (whether the dropped member
was in the top N or not), so a group's rows of ``D`` are two clamped differences against every
channel plus one (M x R) @ (R x C) matmul. A swap changes two groups: 2 x O(C x R) per swap,
O(C^2 R / M) to start. A 512 x 512 x 3 x 3 conv starts in about a second on one CPU thread.
The search runs on the weight's device (much faster on a GPU).

Determinism: the descent is deterministic and escapes and windows come from a seeded
generator, so the result depends only on the weights, the seed and ``max_rounds``, as long as
the time budget does not bind (``PermutationResult.stopped`` says which limit ended the search).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from pruners.targets import parse_nm

__all__ = ["NMTerm", "PermutationResult", "invariant_reason", "nm_term", "retained_magnitude", "search_permutation", "search_terms"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NMTerm:
    """One N:M-pruned weight as the search sees it.

    ``mags`` is (C, R, b): for each of the C permutable input channels, its |w| over the R rows
    N:M groups run along (conv: out x kh x kw; linear: out), ``b`` values per row (b > 1 when a
    flatten gives each channel a block of ``b`` consecutive inputs). A group is ``m // b``
    consecutive channels; each row keeps the ``n`` largest of the group's ``m`` values.
    """

    mags: torch.Tensor
    n: int
    m: int

    @property
    def channels_per_group(self) -> int:
        return self.m // self.mags.shape[2]


def nm_term(weight: torch.Tensor, target: str, block: int = 1) -> NMTerm:
    """The ``NMTerm`` of a conv (out, C, kh, kw) or linear (out, C * block) weight at ``mXnY``.

    Raises ValueError when channel order cannot change what N:M keeps the way a permutation
    search assumes: the input dimension does not split into groups of M (``nm`` leaves such a
    layer dense), or neither of M and ``block`` divides the other (groups straddle channels
    unevenly). When M divides ``block`` every group lies inside one channel and the order does
    not matter; callers can skip such a weight (``invariant_reason``).
    """
    m, n = parse_nm(target)
    w = weight.detach().abs().to(torch.float32)
    if w.dim() >= 3:  # Conv1d/2d/3d: (out, C, *kernel)
        if block != 1:
            raise ValueError("a conv weight's input channels have block 1")
        mags = w.transpose(0, 1).reshape(w.shape[1], -1, 1)
    elif w.dim() == 2:
        if w.shape[1] % block:
            raise ValueError(f"in_features {w.shape[1]} is not a multiple of the channel block {block}")
        mags = w.reshape(w.shape[0], -1, block).permute(1, 0, 2)
    else:
        raise ValueError(f"N:M permutes conv (3- to 5-D) and linear (2-D) weights, got shape {tuple(w.shape)}")
    in_dim = mags.shape[0] * block
    if in_dim % m:
        raise ValueError(f"input dimension {in_dim} is not a multiple of {m} ({target}): nm leaves it dense")
    if m % block:
        raise ValueError(f"groups of {m} straddle channel blocks of {block} inputs unevenly")
    return NMTerm(mags.contiguous(), n, m)


def invariant_reason(target: str, block: int) -> str | None:
    """Why channel order cannot matter to N:M for this consumer, or None."""
    m, _ = parse_nm(target)
    if block > 1 and block % m == 0:
        return f"each group of {m} lies inside one channel's block of {block} inputs"
    return None


def retained_magnitude(terms: Sequence[NMTerm], perm: torch.Tensor | None = None) -> float:
    """Sum of |w| the terms' N:M masks keep with input channels in order ``perm`` (float64)."""
    total = 0.0
    for t in terms:
        x = t.mags if perm is None else t.mags[perm.to(t.mags.device)]
        c, r, b = x.shape
        groups = x.permute(1, 0, 2).reshape(r, c * b // t.m, t.m)
        total += float(groups.topk(t.n, dim=2).values.sum(dtype=torch.float64))
    return total


@dataclass
class PermutationResult:
    """The best permutation found: new channel ``i`` is old channel ``perm[i]``."""

    perm: torch.Tensor
    before: float  # retained |w| with the identity
    after: float  # retained |w| with ``perm`` (>= before)
    seconds: float
    swaps: int  # improving swaps applied, all descents together
    rounds: int  # descents after the first (escapes, or windows)
    stopped: str  # "converged" (no rounds asked), "rounds" or "time" (then not reproducible)
    terms_before: list[float] = field(default_factory=list)  # per term, summing to ``before``
    terms_after: list[float] = field(default_factory=list)

    @property
    def gain(self) -> float:
        """Relative gain in retained magnitude (0.012 = 1.2 %)."""
        return self.after / self.before - 1.0 if self.before > 0 else 0.0


def _rows_fast(xt: torch.Tensor, members: torch.Tensor, n: int, chunk_elems: int = 1 << 20) -> torch.Tensor:
    """``D`` rows of one group (b == 1): (M, C), closed form (see the module docstring).

    Per row, dropping a member that is in the top n costs its value and promotes the (n+1)-th
    largest ``t_lo``; a newcomer x then adds ``relu(x - t_lo)``. Dropping a member outside the
    top n costs nothing; a newcomer adds ``relu(x - t_hi)`` (``t_hi``: the n-th largest). With
    ``y = relu(x - t_lo)``: ``relu(x - t_hi) = y - min(y, t_hi - t_lo)``, so each channel chunk
    is one clamped difference and one matmul (chunks keep the temporaries in cache: 2x faster).
    """
    v = xt[members]  # (M, R)
    s = v.sort(dim=0, descending=True).values  # M is small: sort beats topk along dim 0
    t_hi, t_lo = s[n - 1], s[n]
    delta = t_hi - t_lo
    ind = torch.ones(v.shape[0] + 1, v.shape[1], dtype=v.dtype, device=v.device)
    # Member in the row's top n. On a tie at t_hi with t_lo == t_hi more than n are marked,
    # harmlessly: both cases then give the same D (delta == 0 and t_lo - v == 0).
    ind[:-1] = v >= t_hi  # the last row stays ones: the matmul also sums min(y, delta)
    base = (ind[:-1] * (t_lo - v)).sum(1)
    c, r = xt.shape
    step = max(1, chunk_elems // max(r, 1))
    out = torch.empty(v.shape[0], c, dtype=v.dtype, device=v.device)
    for i in range(0, c, step):
        y = torch.sub(xt[i : i + step], t_lo).clamp_(min=0)
        ysum = y.sum(1)
        prod = ind @ torch.minimum(y, delta, out=y).T  # (M + 1, chunk)
        out[:, i : i + step] = prod[:-1] + (ysum - prod[-1])[None, :]
    return out.add_(base[:, None])


def _rows_generic(x: torch.Tensor, members: torch.Tensor, n: int) -> torch.Tensor:
    """``D`` rows of one group for any ``b``: replace each member by every channel, explicitly."""
    c, r, b = x.shape
    v = x[members]  # (G, R, b)
    g = v.shape[0]
    current = v.permute(1, 0, 2).reshape(r, g * b).topk(n, dim=1).values.sum()
    rows = []
    for i in range(g):
        others = torch.cat([v[:i], v[i + 1 :]]).permute(1, 0, 2).reshape(1, r, (g - 1) * b)
        cand = torch.cat([others.expand(c, r, -1), x], dim=2)  # (C, R, M)
        rows.append(cand.topk(n, dim=2).values.sum((1, 2)) - current)
    return torch.stack(rows)


class _Search:
    """Permutation state, the ``D`` matrix of every term and the swap gains, kept current."""

    def __init__(self, terms: Sequence[NMTerm], device: torch.device) -> None:
        self.terms = [NMTerm(t.mags.to(device), t.n, t.m) for t in terms]
        self.c = self.terms[0].mags.shape[0]
        self.device = device
        self.xt = [t.mags[:, :, 0].contiguous() if t.mags.shape[2] == 1 else None for t in self.terms]
        self.perm = torch.arange(self.c, device=device)
        self.pos = self.perm.clone()
        self.gid = [self.pos // t.channels_per_group for t in self.terms]
        self.d = [torch.zeros(self.c, self.c, device=device) for _ in self.terms]
        self.gains = torch.zeros(self.c, self.c, device=device)
        for k, t in enumerate(self.terms):
            for g in range(self.c // t.channels_per_group):
                self._refresh(k, g)
        self._update_gains(self.perm)

    def _refresh(self, k: int, g: int) -> torch.Tensor:
        """Recompute term ``k``'s ``D`` rows of group ``g``; returns the group's channels."""
        t = self.terms[k]
        size = t.channels_per_group
        members = self.perm[g * size : (g + 1) * size]
        xt = self.xt[k]
        rows = _rows_fast(xt, members, t.n) if xt is not None else _rows_generic(t.mags, members, t.n)
        self.d[k][members] = rows
        return members

    def _update_gains(self, channels: torch.Tensor) -> None:
        """Swap gains of every pair involving ``channels`` (0 within a group of some term)."""
        rows = torch.zeros(len(channels), self.c, device=self.device)
        for d, gid in zip(self.d, self.gid):
            pair = d[channels] + d[:, channels].T
            rows += pair.masked_fill_(gid[channels][:, None] == gid[None, :], 0.0)
        self.gains[channels] = rows
        self.gains[:, channels] = rows.T

    def best_swap(self) -> tuple[int, int, float]:
        flat = int(torch.argmax(self.gains))
        a, c = divmod(flat, self.c)
        return a, c, float(self.gains[a, c])

    def swap(self, a: int, c: int) -> None:
        """Exchange channels ``a`` and ``c`` (their positions), refresh the groups that changed."""
        pa, pc = int(self.pos[a]), int(self.pos[c])
        self.perm[pa], self.perm[pc] = c, a
        self.pos[a], self.pos[c] = pc, pa
        touched = []
        for k, t in enumerate(self.terms):
            size = t.channels_per_group
            ga, gc = pa // size, pc // size
            if ga != gc:
                self.gid[k][a], self.gid[k][c] = gc, ga
                touched += [self._refresh(k, ga), self._refresh(k, gc)]
        if touched:
            self._update_gains(torch.unique(torch.cat(touched)))

    def set_perm(self, perm: torch.Tensor) -> None:
        """Jump to ``perm``, refreshing only the groups whose members changed."""
        old = self.perm
        self.perm = perm.clone()
        self.pos[self.perm] = torch.arange(self.c, device=self.device)
        touched = []
        for k, t in enumerate(self.terms):
            size = t.channels_per_group
            self.gid[k] = self.pos // size
            changed = (old.view(-1, size).sort(1).values != self.perm.view(-1, size).sort(1).values).any(1)
            touched += [self._refresh(k, g) for g in torch.nonzero(changed).flatten().tolist()]
        if touched:
            self._update_gains(torch.unique(torch.cat(touched)))

    def random_swap(self, gen: torch.Generator) -> None:
        """One random swap of two channels in different groups (for some term)."""
        while True:
            a, c = torch.randint(self.c, (2,), generator=gen).tolist()
            if any(int(gid[a]) != int(gid[c]) for gid in self.gid):
                self.swap(a, c)
                return


def _descend(state: _Search, deadline: float | None, tol: float) -> int:
    """Best-improving swaps until none gains more than ``tol`` or time is up; the swap count."""
    swaps = 0
    while deadline is None or time.perf_counter() < deadline:
        a, c, gain = state.best_swap()
        if gain <= tol:
            break
        state.swap(a, c)
        swaps += 1
    return swaps


def _out_of_time(deadline: float | None) -> bool:
    return deadline is not None and time.perf_counter() >= deadline


def search_terms(
    terms: Sequence[NMTerm],
    *,
    time_budget_s: float | None = 5.0,
    max_rounds: int = 100,
    window: int = 64,
    escape_swaps: int = 3,
    seed: int = 0,
    device: torch.device | None = None,
) -> PermutationResult:
    """Best permutation of the channels shared by ``terms`` (the sum of their retained |w|).

    A layer of at most ``window`` channels is searched whole: a descent, then ``max_rounds``
    escapes (``escape_swaps`` random swaps from the best permutation, and a new descent). A
    wider layer is searched in ``max_rounds + 1`` random windows of ``window`` channels (whole
    groups), each descended to its local optimum: a window's first evaluation costs
    O(window^2) instead of O(C^2), so a time budget yields gains on 512-channel layers on a
    CPU, and a new window is a better escape than random swaps. Measured on random
    512 x 512 x 3 x 3 weights at m4n2, one thread of a loaded 2-core CPU, retained-|w| gain
    with a 2 s / 5 s budget: whole layer 0.21 / 0.28 %, 256-channel windows 0.23 / 0.36 %,
    128: 0.40 / 0.39 %, 64: 0.44 / 0.49 % (on a GPU, wider windows pay off).
    ``time_budget_s`` bounds the search (a window's first evaluation is not interrupted);
    None leaves ``max_rounds`` alone to bound it, and the result is then deterministic.
    """
    if not terms:
        raise ValueError("search_terms needs at least one N:M term")
    sizes = {t.mags.shape[0] for t in terms}
    if len(sizes) != 1:
        raise ValueError(f"terms disagree on the number of channels: {sorted(sizes)}")
    start = time.perf_counter()
    deadline = None if time_budget_s is None else start + float(time_budget_s)
    c = sizes.pop()
    terms_before = [retained_magnitude([t]) for t in terms]
    before = sum(terms_before)
    block = math.lcm(*(t.channels_per_group for t in terms))  # a window holds whole groups of every term
    device = device or terms[0].mags.device
    gen = torch.Generator().manual_seed(seed)
    tol = 1e-7 * max(before, 1e-30)  # far above float32 error in D, far below a useful swap
    if c == block:  # one group: nothing to permute
        perm, swaps, rounds, stopped = torch.arange(c), 0, 0, "converged"
    elif c <= max(window, 2 * block):
        perm, swaps, rounds, stopped = _search_whole(terms, device, deadline, tol, max_rounds, escape_swaps, gen)
    else:
        blocks = max(2, window // block)
        perm, swaps, rounds, stopped = _search_windows(terms, device, deadline, tol, max_rounds, blocks, block, gen)
    terms_after = [retained_magnitude([t], perm) for t in terms]
    after = sum(terms_after)
    if after < before:  # float32 rounding in D could only ever cost a hair: keep the identity
        perm, after, terms_after = torch.arange(c), before, list(terms_before)
    assert after >= before, "the search returned a permutation worse than the identity"
    seconds = time.perf_counter() - start
    logger.debug("N:M permutation of %d channels: %.6g -> %.6g in %.2f s (%s)", c, before, after, seconds, stopped)
    return PermutationResult(perm, before, after, seconds, swaps, rounds, stopped, terms_before, terms_after)


def _search_whole(
    terms: Sequence[NMTerm], device: torch.device, deadline: float | None, tol: float,
    max_rounds: int, escape_swaps: int, gen: torch.Generator,
) -> tuple[torch.Tensor, int, int, str]:
    """Descent on the whole layer, then escapes from the best permutation seen."""
    state = _Search(terms, device)
    best_perm, best = state.perm.clone(), retained_magnitude(state.terms)
    swaps = rounds = 0
    while True:
        swaps += _descend(state, deadline, tol)
        value = retained_magnitude(state.terms, state.perm)
        if value > best:
            best, best_perm = value, state.perm.clone()
        if _out_of_time(deadline):
            return best_perm.cpu(), swaps, rounds, "time"
        if rounds >= max_rounds:
            return best_perm.cpu(), swaps, rounds, "rounds" if max_rounds else "converged"
        rounds += 1
        state.set_perm(best_perm)
        for _ in range(escape_swaps):
            state.random_swap(gen)


def _search_windows(
    terms: Sequence[NMTerm], device: torch.device, deadline: float | None, tol: float,
    max_rounds: int, blocks: int, block: int, gen: torch.Generator,
) -> tuple[torch.Tensor, int, int, str]:
    """Descents on random windows of ``blocks`` aligned blocks of ``block`` channels."""
    c = terms[0].mags.shape[0]
    perm = torch.arange(c)
    swaps = 0
    for rounds in range(max_rounds + 1):
        chosen = torch.randperm(c // block, generator=gen)[:blocks].sort().values
        pos = (chosen[:, None] * block + torch.arange(block)).reshape(-1)
        chans = perm[pos]
        state = _Search([NMTerm(t.mags[chans.to(t.mags.device)], t.n, t.m) for t in terms], device)
        swaps += _descend(state, deadline, tol)
        perm[pos] = chans[state.perm.cpu()]
        if _out_of_time(deadline):
            return perm, swaps, rounds, "time"
    return perm, swaps, max_rounds, "rounds"


def search_permutation(weight: torch.Tensor, target: str, *, block: int = 1, **options) -> PermutationResult:
    """``search_terms`` for one conv or linear weight at ``mXnY`` (options as there)."""
    return search_terms([nm_term(weight, target, block)], **options)
