"""Honest sparsity and MAC counts, measured on the effective (masked) weights.

Three sparsities, because they differ and papers mix them up:

* ``sparsity`` -- zeros over all prunable weights (Conv and Linear), the figure to compare;
* ``sparsity_conv`` -- conv weights only (NaN for a model without convs: undefined, not 0);
* ``sparsity_seed`` -- the reference project's "overall sparsity rate": zeros over every
  parameter whose name does not end in ``bias`` (BatchNorm weights included).

MACs come from a real forward with hooks, so they follow the model's actual shapes: a conv
costs (output positions x weight.numel()) dense and (output positions x nonzero weights)
remaining; ``FlopCounterMode`` counts 2 FLOPs per dense MAC.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator, Mapping, Optional

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from pruners.masking import masked_parameters
from pruners.ratio_config import prunable_modules, strip_module_prefix

__all__ = ["count_macs", "layer_table", "sparsity_report"]

logger = logging.getLogger(__name__)


def _kind(module: nn.Module) -> str:
    return "linear" if isinstance(module, nn.Linear) else "conv"


def _effective_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(user-facing name, effective value) for every parameter, each tensor once.

    A parametrized tensor is reported by its public name (``block0.0.weight``) with its
    masked value; the ``original`` it is computed from is not reported separately.
    """
    inside: set[int] = set()
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        if id(module) in inside:
            continue
        prefix = f"{mod_name}." if mod_name else ""
        if parametrize.is_parametrized(module):
            for tensor_name, plist in module.parametrizations.items():
                inside.update(id(m) for m in plist.modules())
                for p in plist.parameters():
                    seen.add(id(p))
                yield strip_module_prefix(prefix + tensor_name), getattr(module, tensor_name).detach()
        for p_name, p in module.named_parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                yield strip_module_prefix(prefix + p_name), p.detach()


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def sparsity_report(model: nn.Module, example_input: Optional[torch.Tensor] = None) -> dict[str, Any]:
    """Sparsity figures (see module doc) and parameter counts; MACs too with ``example_input``."""
    prunable_total = prunable_zeros = conv_total = conv_zeros = 0
    with torch.no_grad():
        for module in prunable_modules(model).values():
            w = module.weight
            zeros = int((w == 0).sum())
            prunable_total += w.numel()
            prunable_zeros += zeros
            if _kind(module) == "conv":
                conv_total += w.numel()
                conv_zeros += zeros
        params_total = params_zeros = seed_total = seed_zeros = 0
        for name, p in _effective_parameters(model):
            zeros = int((p == 0).sum())
            params_total += p.numel()
            params_zeros += zeros
            if not name.endswith("bias"):
                seed_total += p.numel()
                seed_zeros += zeros
    report: dict[str, Any] = {
        "sparsity": _ratio(prunable_zeros, prunable_total),
        "sparsity_conv": _ratio(conv_zeros, conv_total),
        "sparsity_seed": _ratio(seed_zeros, seed_total),
        "params_total": params_total,
        "params_remaining": params_total - params_zeros,
        "prunable_total": prunable_total,
        "prunable_remaining": prunable_total - prunable_zeros,
    }
    if example_input is not None:
        macs = count_macs(model, example_input)
        dense = sum(d for d, _ in macs.values())
        remaining = sum(r for _, r in macs.values())
        report.update(macs_dense=dense, macs_remaining=remaining, flops_ratio=_ratio(remaining, dense))
    return report


def _positions(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    """How many times each weight is used: output positions (input positions if transposed)."""
    if isinstance(module, nn.Linear):
        return output.numel() // output.shape[-1]
    spatial = module.weight.dim() - 2
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        x = inputs[0]
        return x.numel() // x.shape[-(spatial + 1)]
    return output.numel() // output.shape[-(spatial + 1)]


def count_macs(model: nn.Module, example_input: Any) -> dict[str, tuple[int, int]]:
    """Per prunable layer: (dense MACs, remaining MACs) for one forward of ``example_input``.

    The forward runs in eval mode under ``no_grad`` (BatchNorm statistics are not touched;
    training flags are restored). A layer called twice counts twice; one never called counts 0.
    ``example_input`` may be a tensor or a tuple of positional inputs.
    """
    inner = model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model
    layers = prunable_modules(inner)
    counts: dict[str, list[int]] = {name: [0, 0] for name in layers}
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            positions = _positions(module, inputs, output)
            w = module.weight
            counts[name][0] += positions * w.numel()
            counts[name][1] += positions * int(torch.count_nonzero(w))

        return hook

    for name, module in layers.items():
        handles.append(module.register_forward_hook(make_hook(name)))
    modes = {m: m.training for m in inner.modules()}
    inner.eval()
    try:
        with torch.no_grad():
            args = example_input if isinstance(example_input, tuple) else (example_input,)
            inner(*args)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.train(mode)
    return {name: (d, r) for name, (d, r) in counts.items()}


def layer_table(
    model: nn.Module,
    example_input: Optional[Any] = None,
    skipped: Optional[Mapping[str, str]] = None,
) -> list[dict[str, Any]]:
    """One row per prunable layer: shape, zeros, sparsity, mask bookkeeping, MACs.

    ``skipped`` (e.g. ``PruneReport.skipped``) says why a layer was left dense; by default
    the reasons ``prepare`` remembered on the model are used.
    """
    inner = model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model
    reasons = dict(getattr(inner, "_pruners_skipped", {}) if skipped is None else skipped)
    masks = masked_parameters(inner)
    macs = count_macs(inner, example_input) if example_input is not None else {}
    rows: list[dict[str, Any]] = []
    with torch.no_grad():
        for name, module in prunable_modules(inner).items():
            w = module.weight
            zeros = int((w == 0).sum())
            wm = masks.get(name)
            dense, remaining = macs.get(name, (None, None))
            rows.append(
                {
                    "name": name,
                    "kind": _kind(module),
                    "shape": tuple(w.shape),
                    "numel": w.numel(),
                    "zeros": zeros,
                    "sparsity": _ratio(zeros, w.numel()),
                    "method": wm.method if wm is not None else None,
                    "target": wm.target if wm is not None else None,
                    "skipped": reasons.get(name),
                    "macs_dense": dense,
                    "macs_remaining": remaining,
                }
            )
    return rows
