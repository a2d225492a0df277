"""Pure-PyTorch pruning: the six methods, masks as parametrizations, accounting, schedules.

Nothing here imports Ray, so the package is usable on its own::

    import pruners
    mask = pruners.compute_mask("filter", conv.weight, 0.5)
    pruners.prepare(model, {"block2.6.weight": 0.5}, "filter")   # attach masks
    pruners.step(model, fraction=1.0)                             # recompute masks
    pruners.prepare(model, {"*": 0.5}, "channel", example_input=torch.zeros(1, 3, 32, 32))
    pruners.squash(model)                                         # plain weights, zeros kept

Weights are masked in the layout the methods define, (out, in / groups, *kernel): Conv1d/2d/3d and
Linear as stored, a transposed conv's (in, out / groups, *kernel) regrouped (``pruners.layout``).
A layer a method cannot prune (a 1x1 kernel for ``pattern``, MultiheadAttention's bare
``in_proj_weight``, a model torch.fx cannot trace for ``channel``) stays dense, named once in the
log with its reason and in ``PruneReport.skipped``.
"""
from pruners.targets import Target, parse_nm, validate_target
from pruners.registry import (
    METHODS,
    Method,
    check_target,
    compute_mask,
    get_method,
    list_methods,
    register_method,
    skip_reason,
)

# Importing a method module registers its methods; list_methods() follows this order.
from pruners import structured, patterns, channel_method  # noqa: F401  isort: skip
from pruners.channel_ops import UntraceableModel
from pruners.ratio_config import load_ratio_config, prunable_parameters, resolve_targets
from pruners.masking import (
    PruneReport,
    WeightMask,
    is_masked,
    load_masked_state_dict,
    masked_parameters,
    prepare,
    scale_target,
    squash,
    step,
)
from pruners.accounting import count_macs, layer_table, sparsity_report
from pruners.schedules import SCHEDULES, Phase, get_schedule

__all__ = [
    "METHODS",
    "Method",
    "Phase",
    "PruneReport",
    "SCHEDULES",
    "Target",
    "UntraceableModel",
    "WeightMask",
    "check_target",
    "compute_mask",
    "count_macs",
    "get_method",
    "get_schedule",
    "is_masked",
    "layer_table",
    "list_methods",
    "load_masked_state_dict",
    "load_ratio_config",
    "masked_parameters",
    "parse_nm",
    "prepare",
    "prunable_parameters",
    "register_method",
    "resolve_targets",
    "scale_target",
    "skip_reason",
    "sparsity_report",
    "squash",
    "step",
    "validate_target",
]

