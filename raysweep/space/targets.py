"""Targets against the model: every name or glob matches a prunable parameter, and every layer
can take every candidate value. The model is built once on the meta device (names and shapes
without memory)."""
from __future__ import annotations

import functools
import logging
from typing import Any, Mapping, Optional, Sequence

import pruners
from raysweep.space.schema import Param, candidates
from raysweep.space.values import Problems, join

log = logging.getLogger("raysweep.space")

# Methods whose skip depends on the target (an M:N spec the layer cannot divide): leaving
# such a layer dense would silently change the sparsity the trial asked for, so it is an error.
STRICT_SKIP = frozenset({"nm"})



def freeze(options: Any) -> tuple:
    """Dataset options as a hashable key (lists as tuples), for the caches below."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in dict(options or {}).items()))


# ------------------------------------------------------------------------- targets vs model
@functools.lru_cache(maxsize=8)
def build_model(model: Any, dataset: Any, data_root: Optional[str] = None, options: tuple = ()) -> Any:
    """The model with default weights on the meta device (only names and shapes are read). An
    external model (import path, torchvision:, timm:, a callable) is built for the dataset's
    classes and input size, which needs the data."""
    import torch

    from raysweep.models import create_model, is_external

    shape: dict[str, Any] = {}
    if is_external(model):
        from raysweep.data import build_datasets

        try:
            info = build_datasets(dataset, data_root, options={k: list(v) if isinstance(v, tuple) else v for k, v in options})[2]
        except (ValueError, FileNotFoundError) as exc:
            raise ValueError(f"{exc} (an external model is built for its dataset's classes and input size)") from None
        shape = {"num_classes": info.num_classes, "input_size": tuple(info.input_size)}
    try:
        with torch.device("meta"):
            return create_model(model, dataset=dataset, **shape)
    except (RuntimeError, NotImplementedError):  # a constructor that needs real tensors
        return create_model(model, dataset=dataset, **shape)


def _resolve_one(model: Any, key: str) -> tuple[list[str], Optional[str]]:
    try:
        return list(pruners.resolve_targets(model, {key: 0.0})), None
    except ValueError as err:
        return [], str(err).split("\n", 1)[-1].strip()


def governing_keys(model: Any, keys: Sequence[str]) -> dict[str, str]:
    """Parameter name -> the key whose value it takes (exact names win; later globs win)."""
    marks = {key: i / (len(keys) + 1) for i, key in enumerate(keys)}
    by_mark = {mark: key for key, mark in marks.items()}
    return {name: by_mark[mark] for name, mark in pruners.resolve_targets(model, marks).items()}


# Methods whose group on a Linear layer is a whole output row: on the output layer, a class.
CLASS_REMOVING = frozenset({"filter", "stripe"})


def output_parameter(model: Any) -> Optional[str]:
    """The weight of the model's last Linear layer, whose rows are the classes."""
    import torch.nn as nn

    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return f"{linears[-1]}.weight" if linears else None


def warn_if_classes_go(model: Any, method: str, targets: Mapping[str, Any], where: str) -> None:
    """``filter``/``stripe`` on the output layer remove whole classes (a ratio 0.5 on digits
    leaves 5 of 10 classes that can never be predicted): legal, and almost never meant."""
    name = output_parameter(model)
    values = [c for c in candidates(targets.get(name)) if c not in (None, 0, 0.0)] if name in targets else []
    if method in CLASS_REMOVING and values:
        rows = model.get_parameter(name).shape[0]
        log.warning("%s: %s on %s (the output layer, %d classes) removes whole classes at %s; set %r to 0.0 to keep them",
                    where, method, name, rows, ", ".join(map(str, values)), name)  # fmt: skip


def check_targets(model: Any, method: str, targets: Mapping[str, Param], where: str, problems: Problems) -> None:
    """Every key matches a prunable parameter; every layer can take every candidate value."""
    good = []
    for key in targets:
        _, err = _resolve_one(model, key)
        if err:
            problems.add(where, err)
        else:
            good.append(key)
    if not good:
        return
    # The layers themselves: a transposed conv stores its filters along dim 1 (pruners.layout).
    layers = {n: model.get_submodule(n.rpartition(".")[0]) for n in pruners.prunable_parameters(model)}
    skipped: dict[str, list[str]] = {}
    governed = governing_keys(model, good)
    for key in sorted(set(good) - set(governed.values())):
        log.warning("%s: every layer it matches is set by another key, so it has no effect", join(where, key))
    for name, key in governed.items():
        value = targets[key]
        for cand in candidates(value) if value is not None else []:
            if cand == 0:
                continue  # a dense layer needs nothing from the method
            try:
                reason = pruners.skip_reason(method, layers[name], cand)
            except ValueError:
                continue  # a wrong kind of target: reported by the value check
            if reason is None:
                continue
            is_glob = any(c in key for c in "*?[")
            if method in STRICT_SKIP or not is_glob:
                problems.add(join(where, key), f"{cand!r} cannot prune {name} {tuple(layers[name].weight.shape)}: {reason}; set {name!r} to 0.0")
            else:
                skipped.setdefault(key, []).append(name)
    for key, names in skipped.items():
        log.info("%s: method %s leaves %s dense (it cannot prune them)", join(where, key), method, ", ".join(sorted(set(names))))
    warn_if_classes_go(model, method, {name: targets[key] for name, key in governed.items()}, where)
