"""Permute a model's channels so that N:M keeps more weight magnitude (Pool & Yu 2021).

For every free channel group (``pruners.channels``) read by N:M-targeted layers, search one
permutation of the group's channels (``pruners.permutation_search``) that maximises the
magnitude the consumers' N:M masks keep, summed over those consumers (a ResNet stream has
several), and apply it to the whole group: producers' output channels, BatchNorm and every
consumer's input channels. The network computes the same function (up to float summation
order), so this runs on the dense weights before ``pruners.prepare``
(``from pruners.nm_permute import permute_for_nm``)::

    report = permute_for_nm(model, {"*": "m4n2"}, torch.zeros(1, 3, 32, 32))
    pruners.prepare(model, {"*": "m4n2"}, "nm")

Masked layers are read through their masks (the effective weight), and their masks are
permuted with them, so a model prepared at fraction 0 (dense masks) can be permuted too.
Parameters are replaced by new ``nn.Parameter`` objects: build optimizers afterwards.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from pruners.channel_ops import UntraceableModel
from pruners.channels import ChannelGroup, channel_groups, index_channels
from pruners.registry import skip_reason
from pruners.permutation_search import (
    NMTerm,
    PermutationResult,
    invariant_reason,
    nm_term,
    search_terms,
)
from pruners.ratio_config import resolve_targets

__all__ = ["GroupSearch", "LayerGain", "PermuteReport", "permute_for_nm"]

logger = logging.getLogger(__name__)


@dataclass
class LayerGain:
    """Retained |w| of one N:M layer before and after its input channels were permuted."""

    name: str
    target: str
    before: float
    after: float
    group: int  # index into PermuteReport.groups
    seconds: float  # time of the group's search (shared by the group's layers)

    @property
    def gain(self) -> float:
        return self.after / self.before - 1.0 if self.before > 0 else 0.0


@dataclass
class GroupSearch:
    """One searched channel group: its N:M consumers and how the search ended."""

    channels: int
    layers: list[str]
    residual: bool
    before: float
    after: float
    seconds: float
    swaps: int
    rounds: int  # descents after the first (escapes or windows)
    stopped: str  # "converged", "rounds" or "time" (the budget bound: not reproducible)
    applied: bool  # False when the identity was best


@dataclass
class PermuteReport:
    """What ``permute_for_nm`` did, per N:M layer and per channel group."""

    layers: dict[str, LayerGain] = field(default_factory=dict)
    groups: list[GroupSearch] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # N:M layer -> why not permuted
    seconds: float = 0.0

    @property
    def before(self) -> float:
        return sum(g.before for g in self.groups)

    @property
    def after(self) -> float:
        return sum(g.after for g in self.groups)

    @property
    def gain(self) -> float:
        return self.after / self.before - 1.0 if self.before > 0 else 0.0

    def rows(self) -> list[dict]:
        """One plain dict per permuted layer (a pandas/CSV-friendly table)."""
        return [
            {"layer": g.name, "target": g.target, "before": g.before, "after": g.after,
             "gain_pct": 100.0 * g.gain, "group": g.group, "seconds": g.seconds}
            for g in self.layers.values()
        ]  # fmt: skip

    def table(self) -> str:
        """A fixed-width text table: per layer, the total, and the skipped layers."""
        lines = [f"{'layer':<32} {'target':>6} {'before':>12} {'after':>12} {'gain %':>7} {'s':>6}"]
        for r in self.rows():
            lines.append(
                f"{r['layer']:<32} {r['target']:>6} {r['before']:>12.4f} {r['after']:>12.4f} "
                f"{r['gain_pct']:>7.3f} {r['seconds']:>6.2f}"
            )
        lines.append(
            f"{'total':<32} {'':>6} {self.before:>12.4f} {self.after:>12.4f} {100 * self.gain:>7.3f} {self.seconds:>6.2f}"
        )
        lines += [f"skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


def _group_terms(
    model: nn.Module, group: ChannelGroup, nm: Mapping[str, str], skipped: dict[str, str]
) -> tuple[list[str], list[NMTerm], str | None]:
    """The group's N:M layers and their terms; a reason instead when the group cannot be searched."""
    names: list[str] = []
    terms: list[NMTerm] = []
    for mod_name, pname, block in group.consumers:
        name = f"{mod_name}.{pname}"
        if name not in nm:
            continue
        target = nm[name]
        why = invariant_reason(target, block)
        if why is not None:
            skipped[name] = f"channel order does not matter: {why}"
            continue
        weight = getattr(model.get_submodule(mod_name), pname)
        dense = skip_reason("nm", model.get_submodule(mod_name), target)
        if dense is not None:
            skipped[name] = f"nm leaves it dense: {dense}"
            continue
        try:
            term = nm_term(weight, target, block)
        except ValueError as err:  # groups straddle channel blocks: no search is exact here
            return names + [name], [], str(err)
        names.append(name)
        terms.append(term)
    return names, terms, None


def _nm_targets(model: nn.Module, targets: Mapping[str, object]) -> dict[str, str]:
    """Parameter name -> ``mXnY`` target; ratio targets are left out (channel order does not change them)."""
    return {name: t for name, t in resolve_targets(model, targets).items() if isinstance(t, str)}


def _search_and_apply(model: nn.Module, group: ChannelGroup, terms: list[NMTerm], search: dict) -> tuple[PermutationResult, bool]:
    """The group's best permutation, applied in place unless it is the identity (nothing to move)."""
    with torch.no_grad():
        result = search_terms(terms, **search)
        applied = not torch.equal(result.perm, torch.arange(group.size))
        if applied:
            index_channels(model, group, result.perm)
    return result, applied


def _record_search(
    report: PermuteReport, group: ChannelGroup, layers: list[str], nm: Mapping[str, str],
    result: PermutationResult, applied: bool,
) -> None:
    """Add the group's search and each of its layers' gain to ``report``."""
    gi = len(report.groups)
    report.groups.append(GroupSearch(
        group.size, layers, group.residual, result.before, result.after, result.seconds,
        result.swaps, result.rounds, result.stopped, applied,
    ))  # fmt: skip
    for name, before, after in zip(layers, result.terms_before, result.terms_after):
        report.layers[name] = LayerGain(name, nm[name], before, after, gi, result.seconds)


def _permute_group(model: nn.Module, group: ChannelGroup, nm: Mapping[str, str], report: PermuteReport, search: dict) -> list[str]:
    """Search and apply one group's permutation, or say in ``report.skipped`` why not.

    Returns the N:M layers the group feeds, so the caller can name layers no group reached.
    """
    names = [f"{m}.{p}" for m, p, _ in group.consumers if f"{m}.{p}" in nm]
    if not names:
        return names
    if group.fixed_reason is not None:
        report.skipped.update({n: f"input channels are fixed: {group.fixed_reason}" for n in names})
        return names
    if group.offsets or group.chunks > 1:  # an N:M term covers the whole input dimension
        report.skipped.update({n: "input channels are one part of a concatenation or of a grouped conv" for n in names})
        return names
    layers, terms, why = _group_terms(model, group, nm, report.skipped)
    if why is not None:
        report.skipped.update({n: f"group not searched: {why}" for n in layers})
        return names
    if terms:
        result, applied = _search_and_apply(model, group, terms, search)
        _record_search(report, group, layers, nm, result, applied)
    return names


def permute_for_nm(
    model: nn.Module,
    targets: Mapping[str, object],
    example_input: torch.Tensor,
    *,
    time_budget_s: float | None = 5.0,
    max_rounds: int = 100,
    window: int = 64,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> PermuteReport:
    """Permute, in place, every free channel group read by a layer with an ``mXnY`` target.

    ``targets`` is what ``pruners.prepare`` takes (names or globs -> targets; ratio targets
    are ignored). ``time_budget_s`` bounds each group's search (None: only ``max_rounds``
    bounds it, and the result is deterministic for a ``seed``); ``window``: see ``search_terms``.
    ``device`` runs the search there (e.g. the trial's GPU); the model stays where it is.
    Layers whose input channels cannot be permuted (the model input, a fixed group, a layer
    N:M leaves dense, a flatten block inside one N:M group) are listed in ``report.skipped``.
    """
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        raise TypeError("permute_for_nm() must run before wrapping the model in DDP/DataParallel")
    start = time.perf_counter()
    nm = _nm_targets(model, targets)
    search = dict(
        time_budget_s=time_budget_s, max_rounds=max_rounds, window=window, seed=seed,
        device=None if device is None else torch.device(device),
    )  # fmt: skip
    report = PermuteReport()
    consumed: set[str] = set()
    try:
        groups = channel_groups(model, example_input)
    except UntraceableModel as exc:  # no graph, no groups to permute: N:M still masks every layer
        groups = []
        report.skipped.update({name: f"channel order unknown: {exc}" for name in nm})
    for group in groups:
        consumed.update(_permute_group(model, group, nm, report, search))
    for name in nm:
        if name not in consumed and name not in report.skipped:
            report.skipped[name] = "its input channels belong to no channel group the tracer found"
    report.seconds = time.perf_counter() - start
    logger.info(
        "N:M permutations: %d group(s), retained |w| %.6g -> %.6g (%+.3f %%) in %.1f s; %d layer(s) skipped",
        len(report.groups), report.before, report.after, 100 * report.gain, report.seconds, len(report.skipped),
    )
    return report
