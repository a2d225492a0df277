"""The reference project's per-layer ratio YAML, and resolving names against a model.

The reference project's files look like ``{prune_ratio: {module.block0.3.weight: 0.2, ...}}``: names carry
DDP's ``module.`` prefix, which is stripped so the files load unchanged. Names are the model's
own parameter names (``block2.6.weight``); keys containing ``*``, ``?`` or ``[`` are globs
over the prunable parameters (quote them in YAML: a bare leading ``*`` is a YAML alias).
"""
from __future__ import annotations

import difflib
import fnmatch
import logging
import os
from pathlib import Path
from typing import Mapping, Union

import torch.nn as nn
import yaml

from pruners.targets import Target, validate_target

__all__ = [
    "PRUNABLE_TYPES",
    "load_ratio_config",
    "prunable_modules",
    "prunable_parameters",
    "resolve_targets",
    "strip_module_prefix",
    "unprunable_matches",
]

logger = logging.getLogger(__name__)

# Conv (incl. transposed) and linear layers: the only weights the methods know how to group.
PRUNABLE_TYPES: tuple[type, ...] = (nn.modules.conv._ConvNd, nn.Linear)

_DDP_PREFIX = "module."
_GLOB_CHARS = frozenset("*?[")
_RATIO_KEY = "prune_ratio"


def strip_module_prefix(name: str) -> str:
    """``module.block0.0.weight`` -> ``block0.0.weight`` (one leading DDP/DataParallel prefix)."""
    return name[len(_DDP_PREFIX):] if name.startswith(_DDP_PREFIX) else name


def _is_glob(name: str) -> bool:
    return any(c in _GLOB_CHARS for c in name)


def prunable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """User-facing weight name -> its Conv/Linear module, in model order.

    Modules inside a parametrization (``...parametrizations.weight.0``) are never prunable
    layers themselves, and a module shared under two names is listed once (first name).
    """
    out: dict[str, nn.Module] = {}
    for mod_name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES) and getattr(module, "weight", None) is not None:
            name = strip_module_prefix(f"{mod_name}.weight" if mod_name else "weight")
            out[name] = module
    return out


def prunable_parameters(model: nn.Module) -> list[str]:
    """Names of the conv/linear weights (``block0.0.weight``), masked or not, in model order."""
    return list(prunable_modules(model))


def _closest(name: str, candidates: list[str], n: int = 3) -> str:
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.0)
    return ", ".join(close) if close else "(model has no prunable parameters)"


def _non_prunable_kind(model: nn.Module, name: str) -> str | None:
    """If ``name`` is a real parameter of a non-prunable module, that module's class name."""
    mod_name, _, attr = name.rpartition(".")
    for prefix in ("", _DDP_PREFIX):
        try:
            module = model.get_submodule(prefix + mod_name) if (prefix + mod_name) else model
        except AttributeError:
            continue
        if isinstance(getattr(module, attr, None), nn.Parameter) or attr in getattr(
            module, "parametrizations", {}
        ):
            return type(module).__name__
    return None


def resolve_targets(model: nn.Module, targets: Mapping[str, object]) -> dict[str, Target]:
    """Map every key of ``targets`` to prunable parameter names; validate every target.

    Exact names override globs; among globs, later ones override earlier ones. All problems
    (unknown names, globs matching nothing, bad targets) are collected into one ValueError,
    each unknown name with the closest real names, so a typo'd YAML is fixed in one pass.
    """
    names = prunable_parameters(model)
    known = set(names)
    problems: list[str] = []
    exact: dict[str, Target] = {}
    globbed: dict[str, Target] = {}
    for raw_key, raw_target in targets.items():
        if not isinstance(raw_key, str):
            problems.append(f"parameter name {raw_key!r} is not a string")
            continue
        key = strip_module_prefix(raw_key.strip())
        try:
            target = validate_target(raw_target)
        except ValueError as err:
            problems.append(f"{key!r}: {err}")
            continue
        if _is_glob(key):
            matched = fnmatch.filter(names, key)
            if not matched:
                problems.append(
                    f"pattern {key!r} matches no prunable parameter; closest: {_closest(key, names)}"
                )
            for name in matched:
                globbed[name] = target
        elif key in known:
            exact[key] = target
        else:
            kind = _non_prunable_kind(model, key)
            if kind is not None:
                problems.append(
                    f"{key!r} is a {kind} parameter, not prunable (only Conv/Linear weights are); "
                    f"closest: {_closest(key, names)}"
                )
            else:
                problems.append(f"{key!r} matches no prunable parameter; closest: {_closest(key, names)}")
    if problems:
        raise ValueError("invalid prune targets:\n  " + "\n  ".join(problems))
    merged = {**globbed, **exact}
    return {name: merged[name] for name in names if name in merged}


# Why a weight outside a Conv/Linear stays dense, by the class that holds it (first isinstance match).
UNPRUNABLE_REASONS: dict[type, str] = {
    nn.MultiheadAttention: "{kind} {module} keeps its fused q/k/v projection as a bare Parameter, not a Linear "
    "weight, so no method prunes it ({module}.out_proj is a Linear and is pruned like one)",
    nn.Embedding: "{kind} {module} is a lookup table, not a Conv/Linear weight",
}
_UNPRUNABLE_DEFAULT = "{kind} {module} keeps this weight as a bare Parameter; the methods prune Conv/Linear weights only"


def unprunable_matches(model: nn.Module, targets: Mapping[str, object]) -> dict[str, str]:
    """Weights (2-D or more) that a glob in ``targets`` matches but no method can prune -> why.

    ``resolve_targets`` only sees Conv/Linear weights, so ``{"*": 0.5}`` would pass over
    MultiheadAttention's ``in_proj_weight`` in silence; ``prepare`` names these as dense instead.
    """
    globs = [strip_module_prefix(k.strip()) for k in targets if isinstance(k, str) and _is_glob(k)]
    if not globs:
        return {}
    prunable = set(prunable_parameters(model))
    out: dict[str, str] = {}
    for mod_name, module in model.named_modules():
        if "parametrizations" in mod_name.split("."):
            continue
        for p_name, p in module.named_parameters(recurse=False):
            name = strip_module_prefix(f"{mod_name}.{p_name}" if mod_name else p_name)
            if p.dim() < 2 or name in prunable or name in out or not any(fnmatch.fnmatchcase(name, g) for g in globs):
                continue
            template = next((r for cls, r in UNPRUNABLE_REASONS.items() if isinstance(module, cls)), _UNPRUNABLE_DEFAULT)
            out[name] = template.format(kind=type(module).__name__, module=mod_name or "(the model)")
    return out


def _read_mapping(path_or_mapping: Union[str, os.PathLike, Mapping]) -> Mapping:
    if isinstance(path_or_mapping, Mapping):
        return path_or_mapping
    path = Path(path_or_mapping)
    if not path.is_file():
        raise FileNotFoundError(f"ratio config not found: {path}")
    with path.open("r", encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    if data is None:
        raise ValueError(f"ratio config {path} is empty")
    if not isinstance(data, Mapping):
        raise ValueError(f"ratio config {path} must be a mapping, got {type(data).__name__}")
    return data


def load_ratio_config(path_or_mapping: Union[str, os.PathLike, Mapping]) -> dict[str, Target]:
    """Per-layer targets from the reference project's YAML (``prune_ratio: {name: target}``) or a plain mapping.

    ``module.`` prefixes are stripped; every target is validated and all errors are reported
    in one ValueError. Names are not checked against a model here: see ``resolve_targets``.
    """
    data = _read_mapping(path_or_mapping)
    if _RATIO_KEY in data:
        extra = [k for k in data if k != _RATIO_KEY]
        if extra:
            logger.warning("ratio config: ignoring keys other than %r: %s", _RATIO_KEY, extra)
        data = data[_RATIO_KEY]
        if not isinstance(data, Mapping):
            raise ValueError(f"{_RATIO_KEY!r} must map parameter names to targets, got {type(data).__name__}")
    problems: list[str] = []
    out: dict[str, Target] = {}
    for raw_key, raw_target in data.items():
        if not isinstance(raw_key, str):
            problems.append(f"parameter name {raw_key!r} is not a string")
            continue
        key = strip_module_prefix(raw_key.strip())
        if key in out:
            problems.append(f"{key!r} is given twice (with and without 'module.')")
            continue
        try:
            out[key] = validate_target(raw_target)
        except ValueError as err:
            problems.append(f"{key!r}: {err}")
    if problems:
        raise ValueError("invalid ratio config:\n  " + "\n  ".join(problems))
    if not out:
        raise ValueError("ratio config names no parameters")
    return out
