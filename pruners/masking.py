"""Masks in the model, torch.ao.pruning-style: ``prepare`` -> ``step`` (repeatedly) -> ``squash``.

A mask is a ``torch.nn.utils.parametrize`` parametrization (``WeightMask``) whose ``mask`` and
``enforced`` are *persistent* buffers, so a checkpoint carries the masks and a resumed trial
keeps them. The effective weight is ``original * mask`` while enforced, so a pruned weight is
exactly 0 through any optimizer (momentum and weight decay act on ``original``, never on the
product). Register masks before wrapping in DDP: parametrizing a wrapped model fails.
"""
from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional, Union

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from pruners.registry import Method, compute_mask, get_method, skip_reason
from pruners.ratio_config import prunable_modules, resolve_targets, strip_module_prefix
from pruners.targets import Target, validate_target

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

_SAFE_OPTION_TYPES = (bool, int, float, str, type(None))


def _checkpointable(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options that survive ``torch.load(weights_only=True)``; others are dropped with a warning."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, _SAFE_OPTION_TYPES) or isinstance(value, torch.Tensor):
            out[key] = value
        else:
            logger.warning("mask option %r=%r is not saved in checkpoints (not a plain value)", key, value)
    return out


class WeightMask(nn.Module):
    """Parametrization ``w -> w * mask`` while ``enforced``, else ``w`` (dense regrow phase).

    ``method``, ``target`` and ``options`` are bookkeeping for ``step``; they travel in the
    state dict as extra state (plain values), so a reloaded model can keep stepping.
    """

    def __init__(
        self,
        mask: torch.Tensor,
        method: str = "",
        target: Target = 0.0,
        *,
        enforced: bool = True,
        options: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.bool).clone(), persistent=True)
        self.register_buffer("enforced", torch.tensor(bool(enforced), device=mask.device), persistent=True)
        self.method = method
        self.target = target
        self.options: dict[str, Any] = dict(options or {})
        self._cache_key: tuple = ()
        self._enforced_now = bool(enforced)
        self._mask_f: Optional[torch.Tensor] = None

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        # One multiply by a cached float mask: cheaper than where() over a bool mask, which costs
        # ~10 passes over each weight per step (benchmarks/bench_masked_step.py). The cache is
        # rebuilt only when the buffers change (in-place edits bump a tensor's _version), so the
        # host reads `enforced` only then, not every forward.
        key = (self.mask.data_ptr(), self.mask._version, self.enforced.data_ptr(), self.enforced._version, w.dtype)
        if key != self._cache_key:
            self._cache_key = key
            self._enforced_now = bool(self.enforced)
            self._mask_f = self.mask.to(w.dtype)
        return w * self._mask_f if self._enforced_now else w

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        # Assigning ``module.weight = t`` stores ``t`` as the original (masked at forward).
        return w

    def get_extra_state(self) -> dict[str, Any]:
        return {"method": self.method, "target": self.target, "options": _checkpointable(self.options)}

    def set_extra_state(self, state: Any) -> None:
        if isinstance(state, Mapping):
            self.method = str(state.get("method", self.method))
            self.target = state.get("target", self.target)
            self.options = dict(state.get("options") or {})

    def extra_repr(self) -> str:
        kept = int(self.mask.sum())
        return f"method={self.method!r}, target={self.target!r}, kept={kept}/{self.mask.numel()}"


@dataclass
class PruneReport:
    """What ``prepare`` did: targets of the masked layers, and why others were left dense."""

    pruned: dict[str, Target] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    method: str = ""


def scale_target(target: Target, fraction: float) -> Target:
    """The target at ``fraction`` of the way to ``target`` (gradual schedules).

    A ratio scales linearly. An ``mXnY`` spec cannot be graded (N:M is all or nothing):
    ``fraction >= 1`` gives the spec, anything less gives 0.0, i.e. dense.
    """
    fraction = float(fraction)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    t = validate_target(target)
    if isinstance(t, str):
        return t if fraction >= 1.0 else 0.0
    return t * fraction


def _unwrap(model: nn.Module) -> nn.Module:
    """The inner model of DDP / DataParallel (their parameter names carry ``module.``)."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


def _entries(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, WeightMask]]:
    """(user-facing name, owning module, tensor name, WeightMask) for every mask in ``model``."""
    for mod_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name, plist in module.parametrizations.items():
            for p in plist:
                if isinstance(p, WeightMask):
                    full = f"{mod_name}.{tensor_name}" if mod_name else tensor_name
                    yield strip_module_prefix(full), module, tensor_name, p


def masked_parameters(model: nn.Module) -> dict[str, WeightMask]:
    """User-facing parameter name (``block0.0.weight``) -> its ``WeightMask``."""
    return {name: wm for name, _, _, wm in _entries(model)}


def is_masked(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` carries a ``WeightMask``."""
    return next(_entries(model), None) is not None


def _dense_mask(weight: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(weight, dtype=torch.bool)


def prepare(
    model: nn.Module,
    targets: Mapping[str, object],
    method: Union[str, Method],
    *,
    fraction: float = 1.0,
    enforce: bool = True,
    **options: Any,
) -> PruneReport:
    """Attach a ``WeightMask`` to every target parameter, then compute masks (``step``).

    Names resolve through ``resolve_targets`` (``module.`` stripped, globs expanded, one
    ValueError for all bad names). Layers the method cannot prune get no mask and are listed
    in ``report.skipped``. Call before wrapping in DDP. ``options`` go to every
    ``compute_mask`` call of these layers (and override the method's model-wide options).
    """
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        raise ValueError("prepare() must run before wrapping the model in DDP/DataParallel")
    m = get_method(method)
    resolved = resolve_targets(model, targets)
    modules = prunable_modules(model)
    already = masked_parameters(model)
    report = PruneReport(method=m.name)
    for name, target in resolved.items():
        if name in already:
            raise ValueError(f"{name!r} is already masked; squash() the model before preparing it again")
        module = modules[name]
        reason = skip_reason(m, module.weight.shape, target)
        if reason is not None:
            report.skipped[name] = reason
            continue
        mask = WeightMask(_dense_mask(module.weight), m.name, target, enforced=enforce, options=options)
        parametrize.register_parametrization(module, "weight", mask)
        report.pruned[name] = target
    if report.skipped:
        logger.info("method %s leaves %d layer(s) dense: %s", m.name, len(report.skipped), report.skipped)
    # Remembered on the model so accounting.layer_table can show why a layer is dense.
    skipped = dict(getattr(model, "_pruners_skipped", {}))
    skipped.update(report.skipped)
    model._pruners_skipped = skipped  # type: ignore[attr-defined]
    step(model, fraction=fraction, enforce=enforce)
    logger.info("prepared %d masked layer(s) with %s at fraction %.3f", len(report.pruned), m.name, fraction)
    return report


def _model_options(method: Method, weights: list[torch.Tensor]) -> dict[str, Any]:
    if method.model_options is None or not weights:
        return {}
    return dict(method.model_options(weights))


@torch.no_grad()
def step(model: nn.Module, *, fraction: float = 1.0, enforce: bool = True) -> None:
    """Recompute every mask from the current effective weights at ``scale_target(target, fraction)``.

    Then hard-prune: ``original`` is zeroed where the mask is False, so a regrow phase
    restarts pruned weights from 0 and a later recompute never revives a stale value (an
    optimizer's momentum can move ``original`` under an enforced mask; the effective weight
    is reset first). Model-wide method options are computed once per method per step.
    """
    fraction = float(fraction)
    entries = list(_entries(model))
    effective: list[torch.Tensor] = []
    for _, module, tensor_name, wm in entries:
        original = module.parametrizations[tensor_name].original
        if bool(wm.enforced):
            original.mul_(wm.mask)  # original := effective weight
        effective.append(original.detach())
    by_method: dict[str, list[torch.Tensor]] = defaultdict(list)
    for (_, _, _, wm), w in zip(entries, effective):
        by_method[wm.method].append(w)
    shared = {name: _model_options(get_method(name), ws) for name, ws in by_method.items()}
    for (name, module, tensor_name, wm), w in zip(entries, effective):
        target = scale_target(wm.target, fraction)
        if isinstance(target, float) and target == 0.0:
            mask = _dense_mask(w)
        else:
            mask = compute_mask(wm.method, w, target, **{**shared[wm.method], **wm.options})
        wm.mask.copy_(mask)
        module.parametrizations[tensor_name].original.mul_(wm.mask)
        wm.enforced.fill_(bool(enforce))
    logger.debug("step: %d mask(s) at fraction %.3f, enforce=%s", len(entries), fraction, enforce)


def squash(model: nn.Module) -> nn.Module:
    """Remove the masks, leaving plain ``weight`` Parameters with the zeros in place (export).

    In place. Not on a ``copy.deepcopy`` of a masked model whose original is still used: torch
    shares the parametrized module class between the copies, and removing the parametrization
    from one deletes ``weight`` from the other; ``pruners.compact.squashed_copy`` is safe.
    """
    for name, module, tensor_name, _ in list(_entries(model)):
        plist = module.parametrizations[tensor_name]
        if not all(isinstance(p, WeightMask) for p in plist):
            raise ValueError(f"{name!r} has other parametrizations besides its mask; remove them first")
        parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
    return model


_MASK_KEY = re.compile(r"^(?:(?P<mod>.*)\.)?parametrizations\.(?P<tensor>[^.]+)\.(?P<idx>\d+)\.mask$")


def load_masked_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True
) -> Any:
    """Load a state dict saved from a masked model into a fresh (or masked) model.

    Masks are attached from the checkpoint's ``...parametrizations.<tensor>.<i>.mask`` and
    ``.enforced`` entries, so restoring needs no knowledge of targets. Keys may carry
    ``module.``. Returns ``load_state_dict``'s result (missing / unexpected keys).
    """
    inner = _unwrap(model)
    sd = {strip_module_prefix(k): v for k, v in state_dict.items()}
    existing = {(id(module), tname) for _, module, tname, _ in _entries(inner)}
    for key, mask in sd.items():
        match = _MASK_KEY.match(key)
        if match is None:
            continue
        mod_name, tensor_name, idx = match.group("mod") or "", match.group("tensor"), int(match.group("idx"))
        try:
            module = inner.get_submodule(mod_name)
        except AttributeError as err:
            raise ValueError(f"checkpoint masks {key!r} but the model has no module {mod_name!r}") from err
        if (id(module), tensor_name) in existing:
            continue
        n_existing = len(module.parametrizations[tensor_name]) if parametrize.is_parametrized(module, tensor_name) else 0
        if n_existing != idx:
            raise ValueError(f"checkpoint masks {key!r} at position {idx}, the model has {n_existing} parametrization(s) there")
        if tuple(getattr(module, tensor_name).shape) != tuple(mask.shape):
            raise ValueError(
                f"checkpoint mask {key!r} has shape {tuple(mask.shape)}, "
                f"the model's {tensor_name} is {tuple(getattr(module, tensor_name).shape)}"
            )
        prefix = key[: -len("mask")]
        enforced = sd.get(prefix + "enforced", torch.tensor(True))
        wm = WeightMask(mask.to(getattr(module, tensor_name).device), enforced=bool(enforced))
        parametrize.register_parametrization(module, tensor_name, wm)
    result = inner.load_state_dict(sd, strict=False)
    # A mask saved without extra state (no ``._extra_state`` key) still loads.
    missing = [k for k in result.missing_keys if not k.endswith("._extra_state")]
    if strict and (missing or result.unexpected_keys):
        raise RuntimeError(
            f"error loading masked state dict: missing keys {missing}, unexpected keys {result.unexpected_keys}"
        )
    return result
