"""Masks in the model, torch.ao.pruning-style: ``prepare`` -> ``step`` (repeatedly) -> ``squash``.

``prepare`` plans which tensors to mask (a per-weight method: its targets, and with ``filter``/
``stripe`` the bias and per-channel layers after each weight; a graph method such as ``channel``:
whatever its plan says), attaches a ``WeightMask`` to each and computes the masks once.
``step`` recomputes them: primary masks by the method, then the masks derived from producers'
dead rows. Register masks before wrapping in DDP: parametrizing a wrapped model fails.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn as nn

from pruners.followers import derived_mask, follower_plan, rows_alive, unexpand
from pruners.layout import layout_of
from pruners.mask_register import register_mask
from pruners.plan import MaskPlan, TensorPlan
from pruners.ratio_config import prunable_modules, resolve_targets, unprunable_matches
from pruners.registry import Method, compute_mask, get_method, skip_reason
from pruners.targets import Target, scale_target
from pruners.weight_mask import WeightMask, entries, is_masked, load_masked_state_dict, masked_parameters, modules_of, squash

__all__ = [
    "PruneReport",
    "WeightMask",
    "is_masked",
    "load_masked_state_dict",
    "masked_parameters",
    "prepare",
    "scale_target",
    "squash",
    "step",
]

logger = logging.getLogger(__name__)


@dataclass
class PruneReport:
    """What ``prepare`` did: targets of the masked layers, and why others were left dense."""

    pruned: dict[str, Target] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    method: str = ""
    derived: int = 0  # tensors masked only through the rows of pruned weights (biases, BatchNorms, inputs)


def _weight_plan(model: nn.Module, method: Method, resolved: Mapping[str, Target], options: Mapping[str, Any]) -> MaskPlan:
    """A per-weight method's plan: each target weight (or why it is skipped), and its followers."""
    plan = MaskPlan()
    modules = prunable_modules(model)
    for name, target in resolved.items():
        reason = skip_reason(method, modules[name], target)
        if reason is not None:
            plan.skipped[name] = reason
        else:
            plan.tensors[name] = TensorPlan(target, options=dict(options))
    if method.kills_channels and plan.tensors:
        follower_plan(model, list(plan.tensors), plan)
    return plan


def _attach(model: nn.Module, method: Method, plan: MaskPlan, enforce: bool) -> PruneReport:
    """Register a dense ``WeightMask`` on every planned tensor; derived masking merges into existing masks."""
    already = masked_parameters(model)
    for name, tp in plan.tensors.items():
        if tp.primary and name in already:
            raise ValueError(f"{name!r} is already masked; squash() the model before preparing it again")
    report = PruneReport(method=method.name, skipped=dict(plan.skipped))
    named = dict(modules_of(model))  # one walk, not a get_submodule per tensor
    for name, tp in plan.tensors.items():
        if name in already:
            wm = already[name]
            wm.follows = tuple(dict.fromkeys(wm.follows + tp.follows))
            wm.reads = tuple(dict.fromkeys(wm.reads + tp.reads))
            continue
        mod_name, _, tensor_name = name.rpartition(".")
        module = named[mod_name] if mod_name in named else model.get_submodule(mod_name)
        dense = torch.ones_like(getattr(module, tensor_name), dtype=torch.bool)
        wm = WeightMask(dense, method.name if tp.primary else "", tp.target if tp.primary else 0.0,
                        enforced=enforce, options=tp.options, follows=tp.follows, reads=tp.reads, copy=False)  # fmt: skip
        register_mask(module, tensor_name, wm)
        if tp.primary:
            report.pruned[name] = tp.target
        else:
            report.derived += 1
    return report


def prepare(
    model: nn.Module,
    targets: Mapping[str, object],
    method: Union[str, Method],
    *,
    fraction: float = 1.0,
    enforce: bool = True,
    example_input: Optional[torch.Tensor] = None,
    **options: Any,
) -> PruneReport:
    """Attach a ``WeightMask`` to every tensor the method plans to mask, then compute masks (``step``).

    Names resolve through ``resolve_targets`` (``module.`` stripped, globs expanded, one
    ValueError for all bad names). Layers the method cannot prune get no mask and are listed
    in ``report.skipped``. Call before wrapping in DDP. ``options`` go to every
    ``compute_mask`` call of these layers (and override the method's model-wide options); a
    graph method (``channel``) takes its own (``importance``, ``data``) and needs
    ``example_input`` (a batch, e.g. ``torch.zeros(1, 3, 32, 32)``) to trace the model.
    """
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        raise ValueError("prepare() must run before wrapping the model in DDP/DataParallel")
    m = get_method(method)
    resolved = resolve_targets(model, targets)
    if m.graph is not None:
        plan = m.graph.plan(model, resolved, example_input, dict(options))
    else:
        plan = _weight_plan(model, m, resolved, options)
    for name, reason in unprunable_matches(model, targets).items():
        plan.skipped.setdefault(name, reason)
    report = _attach(model, m, plan, enforce)
    fresh = set(report.pruned) | {n for n, tp in plan.tensors.items() if not tp.primary}
    _log_skipped(model, m.name, report.skipped)
    # Remembered on the model so accounting.layer_table can show why a layer is dense.
    skipped = dict(getattr(model, "_pruners_skipped", {}))
    skipped.update(report.skipped)
    model._pruners_skipped = skipped  # type: ignore[attr-defined]
    _step(model, fraction, enforce, fresh)
    logger.info("prepared %d masked layer(s) (+%d derived) with %s at fraction %.3f",
                len(report.pruned), report.derived, m.name, fraction)  # fmt: skip
    return report


def _log_skipped(model: nn.Module, method: str, skipped: Mapping[str, str]) -> None:
    """One line per layer left dense, naming its kind: "stripe leaves features.0.weight (Conv1d) dense: ..."."""
    for name, reason in skipped.items():
        mod_name = name.rpartition(".")[0]
        try:
            kind = type(model.get_submodule(mod_name)).__name__ if mod_name else type(model).__name__
        except AttributeError:
            kind = "?"
        logger.info("%s leaves %s (%s) dense: %s", method, name, kind.removeprefix("Parametrized"), reason)


def _model_options(method: Method, weights: list[torch.Tensor]) -> dict[str, Any]:
    if method.model_options is None or not weights:
        return {}
    return dict(method.model_options(weights))


Entries = dict[str, tuple[nn.Module, str, WeightMask]]


def _primary_masks(model: nn.Module, items: Entries, effective: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Each method's own masks: per weight, or for a graph method from the whole model at once."""
    by_method: dict[str, Entries] = defaultdict(dict)
    for name, item in items.items():
        if item[2].method:
            by_method[item[2].method][name] = item
    out: dict[str, torch.Tensor] = {}
    for method_name, own in by_method.items():
        method = get_method(method_name)
        if method.graph is not None:
            out.update(method.graph.masks(model, own, fraction))
            continue
        # The methods see every weight as (out, in / groups, *kernel): a transposed conv's is regrouped.
        layouts = {name: layout_of(module, tensor) for name, (module, tensor, _) in own.items()}
        shared = _model_options(method, [layouts[n].view(effective[n]) for n in own])
        for name, (_, _, wm) in own.items():
            w = effective[name]
            target = scale_target(wm.target, fraction)
            if isinstance(target, float) and target == 0.0:
                out[name] = torch.ones_like(w, dtype=torch.bool)
            else:
                mask = compute_mask(method_name, layouts[name].view(w), target, **{**shared, **wm.options})
                out[name] = layouts[name].unview(mask)
    return out


def _grouping(module: nn.Module, tensor_name: str) -> int:
    """What ``derived_mask`` reads of the module: a grouped conv's weight takes its columns per group."""
    groups = getattr(module, "groups", 1) if isinstance(module, nn.modules.conv._ConvNd) and tensor_name == "weight" else 1
    return groups if isinstance(groups, int) else 1


def _with_derived(items: Entries, primary: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Primary masks ANDed with the rows/columns that dead producer rows kill (primary rows only).

    Masks broadcast to their tensors' shapes (a row or column mask stays one): ``_step`` copies
    them into the buffers and multiplies the originals by them as they are."""
    alive: dict[str, torch.Tensor] = {}

    def rows(source: str) -> Optional[torch.Tensor]:
        """The source's live output channels (a transposed conv's filters are regrouped first)."""
        if source not in alive:
            mask = primary.get(source)
            if mask is None and source in items:
                mask = items[source][2].mask
            layout = layout_of(*items[source][:2]) if source in items else layout_of(None)
            if mask is not None and layout.transposed:
                mask = layout.view(mask.expand(items[source][2].mask.shape))
            alive[source] = None if mask is None else rows_alive(mask)
        return alive[source]

    out: dict[str, torch.Tensor] = {}
    # A BatchNorm's weight and bias (and any tensors of one shape following the same rows) share one derived mask.
    derived_of: dict[tuple, torch.Tensor] = {}
    for name, (module, tensor_name, wm) in items.items():
        mask = primary.get(name)
        if wm.follows or wm.reads:
            shape = wm.mask.shape
            key = (tuple(shape), wm.follows, wm.reads, _grouping(module, tensor_name))
            derived = derived_of.get(key)
            if derived is None:
                follows = [(r, off, 1) for src, off, _ in wm.follows if (r := rows(src)) is not None]
                reads = [(r, off, block) for src, off, block in wm.reads if (r := rows(src)) is not None]
                derived = derived_of[key] = derived_mask(shape, module, tensor_name, follows, reads)
            mask = derived if mask is None else unexpand(mask) & derived  # small when both broadcast
        if mask is None:  # no method and nothing to follow (a mask saved without bookkeeping): kept as is
            mask = wm.mask.clone() if not wm.method else torch.ones_like(wm.mask)
        out[name] = mask
    return out


def step(model: nn.Module, *, fraction: float = 1.0, enforce: bool = True) -> None:
    """Recompute every mask from the current effective weights at ``scale_target(target, fraction)``.

    Then hard-prune: ``original`` is zeroed where the mask is False, so a regrow phase
    restarts pruned weights from 0 and a later recompute never revives a stale value (an
    optimizer's momentum can move ``original`` under an enforced mask; the effective weight
    is reset first). Model-wide method options are computed once per method per step.
    """
    _step(model, float(fraction), enforce, set())


@torch.no_grad()
def _step(model: nn.Module, fraction: float, enforce: bool, fresh: set[str]) -> None:
    """``step``; the ``fresh`` masks were just attached dense, so their originals need no reset."""
    items: Entries = {}
    effective: dict[str, torch.Tensor] = {}
    originals: dict[str, torch.Tensor] = {}
    for name, module, tensor_name, wm in entries(model):
        original = originals[name] = module.parametrizations[tensor_name].original
        if name not in fresh and bool(wm.enforced):
            original.mul_(wm.mask.view(torch.uint8))  # original := effective weight (uint8: 2x a bool multiply)
        items[name] = (module, tensor_name, wm)
        effective[name] = original.detach()
    masks = _with_derived(items, _primary_masks(model, items, effective, fraction))
    factors: dict[tuple, torch.Tensor] = {}  # float row/column masks, one per mask tensor shared (a BatchNorm's weight and bias)
    for name, (module, tensor_name, wm) in items.items():
        buffer, original = wm.mask, originals[name]
        small = unexpand(masks[name])  # a row/column mask multiplies by broadcasting, not element by element
        buffer.copy_(small)  # broadcast into the buffer
        if small.numel() < buffer.numel():
            key = (id(small), original.dtype)  # ``masks`` keeps every small mask alive: ids stay unique
            factor = factors[key] = factors[key] if key in factors else small.to(original.dtype)
            original.mul_(factor)
        else:
            original.mul_(buffer.view(torch.uint8))
        wm.enforced.fill_(bool(enforce))
        wm.mark_pruned(original)  # compaction then takes ``original`` as the effective weight, uncopied
    logger.debug("step: %d mask(s) at fraction %.3f, enforce=%s", len(items), fraction, enforce)
