"""Reading a search space: a YAML file, a shipped name, a mapping or a reference ratio file,
with ``--set key=value`` overrides, into a checked ``SearchSpace`` (raysweep.space.schema).

The format (every key optional; defaults in brackets)::

    name: digits-default          # experiment name [the file's stem]
    model: digits_cnn             # zoo name, "pkg.mod:factory", "torchvision:<name>", "timm:<name>" [digits_cnn]
    dataset: digits               # raysweep.data name (digits is embedded) or "pkg.mod:factory" [digits]
    dataset_options: {}           # imagefolder's image_size/channels/mean/std; num_classes/input_size [{}]
    data_root: null               # dataset folder (checked by the sweep, not here) [null]
    dense: train                  # 'train' = train the dense model once per model/dataset and
                                  #   cache it; or a weights file (checked by the sweep) [train]
    dense_epochs: 20              # [20]
    dense_lr: 0.05                # [0.05]
    trials: 20                    # searched trials; points come on top [20]
    search: optuna                # random | grid | optuna [optuna]
    sampler: nsga2                # optuna only: nsga2 | tpe (multi-objective TPE) [nsga2]
    seed: 0                       # [0]
    scheduler: fifo               # fifo | asha (on accuracy, time_attr="epoch") [fifo]
    asha: {grace_period: 1, reduction_factor: 2}
    objectives: {accuracy: max, sparsity: max}   # flops_ratio: min too; a list takes natural modes
    resources: {workers_per_trial: 1, cpus_per_worker: 1, gpus_per_worker: 0, executor: auto}
    epochs: 4                     # fine-tune epochs per trial: a value or a distribution [4]
    lr: {loguniform: [0.005, 0.05]}               # same for lr [0.01], batch_size [128], wd [5e-4]
    methods:                      # method -> per-layer targets: name or glob -> value or distribution
      irregular: {"*": {uniform: [0.5, 0.95]}, "features.0.weight": 0.0}
      nm: {"*": {choice: [m4n2, m4n1, m8n2]}, "features.0.weight": 0.0}
      filter:                     # or one global target shaped by an allocation family
        allocation: {family: {choice: [lamp, erk]}, target: {uniform: [0.2, 0.7]}, perturb: {"features.*": 0.0}}
        "classifier.2.weight": 0.0  # fixed layers; the others absorb the target
    # or: methods: [irregular, filter]  plus a shared  ratios: {"*": {uniform: [0.3, 0.9]}}
    schedules:                    # name -> params (values or distributions); a trial picks one
      oneshot: {}
      agp: {end_epoch: 2, frequency: 1}
    points:                       # fixed configurations run besides the `trials`
      - {method: irregular, config_file: reference/vgg16_cifar10_irre.yaml, schedule: oneshot}
      - {method: filter, ratios: {"*": 0.5}, label: uniform-filter}

Distributions: ``{choice: [...]}``, ``{uniform: [lo, hi]}``, ``{quniform: [lo, hi, q]}``,
``{loguniform: [lo, hi]}`` (lo > 0). Method names may be the reference project's aliases
(``irre_prune``). A glob is ONE searched value shared by every parameter it matches; exact
names override globs, later globs override earlier ones. A point may also set ``epochs``,
``lr``, ``batch_size``, ``wd``, ``schedule_params`` and a ``label``; what it leaves out takes
the space's value (a distribution's midpoint, first choice for a choice).

Relative paths (``config_file``, ``dense``, ``data_root``) resolve against the space file's
folder, except in the shipped spaces, where ``dense`` and ``data_root`` name *your* files and
resolve against the current directory; ``--set`` values resolve against the current directory.
A reference-project ratio YAML (top-level ``prune_ratio``) is a space too: no search, one point
(``--set method=filter``; default ``nm`` for M:N files, else ``irregular``; model/dataset
default vgg16/cifar10).

Overrides edit the raw mapping before it is checked, so a bad override is reported like any
other problem. Keys are dotted paths; under ``methods.<m>.``, ``ratios.``,
``points.<i>.ratios.`` and ``<any of those>.allocation.perturb.`` the rest is one parameter
name or glob (dots included), except ``allocation`` itself (``methods.irregular.allocation.target``);
a quoted segment or one with ``*`` is taken whole.
"""
from __future__ import annotations

import copy
import importlib.resources
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import yaml

import pruners
from raysweep.space.parse import parse_space
from raysweep.space.schema import ALLOCATION_KEY, DENSE_TRAIN, SearchSpace, SpaceError
from raysweep.space.values import Problems, suggest

DEFAULT_SPACE = "digits"
SPACES_PACKAGE = "search_spaces"
REFERENCE_KEY = "prune_ratio"  # the reference project's ratio YAML
REFERENCE_DEFAULTS = {"model": "vgg16", "dataset": "cifar10", "method": "irregular"}
# Keys under which the rest of a --set key is one parameter name or glob (dots included).
_NAME_PARENTS = (("methods", None), ("ratios",), ("points", None, "ratios"))
_ALLOCATION = "allocation"  # a method's allocation section: its fields are keys, not names
_PERTURB_PARENTS = (("methods", None, _ALLOCATION, "perturb"), ("ratios", _ALLOCATION, "perturb"), ("points", None, _ALLOCATION, "perturb"))


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``5e-4`` as a string; spaces mean the number."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*\.?\d*|\.\d+)[eE][-+]?\d+$|^[-+]?(?:\d[\d_]*\.\d*|\.\d+)$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def _tokens(key: str) -> list[tuple[str, bool]]:
    """Split on dots outside quotes: [(segment, was_quoted)]."""
    out, buf, quote, quoted = [], "", None, False
    for ch in key:
        if quote:
            quote, buf = (None, buf) if ch == quote else (quote, buf + ch)
        elif ch in "'\"":
            quote, quoted = ch, True
        elif ch == ".":
            out.append((buf, quoted))
            buf, quoted = "", False
        else:
            buf += ch
    return out + [(buf, quoted)]


def _matches(path: list[str], parents: tuple) -> bool:
    return any(len(path) == len(p) and all(a is None or a == b for a, b in zip(p, path)) for p in parents)


def _takes_name(path: list[str], segment: str) -> bool:
    return (_matches(path, _NAME_PARENTS) and segment != _ALLOCATION) or _matches(path, _PERTURB_PARENTS)


def override_path(key: str) -> list[str]:
    """``methods.irregular.features.0.weight`` -> ['methods', 'irregular', 'features.0.weight']."""
    tokens, path = _tokens(key.strip()), []
    for i, (text, quoted) in enumerate(tokens):
        if quoted or "*" in text or _takes_name(path, text):
            path.append(".".join(t for t, _ in tokens[i:]))
            break
        path.append(text)
    return path


def _canonical(section: str, name: Any) -> Any:
    try:
        return pruners.get_method(name).name if section == "methods" else name
    except ValueError:
        return name  # an unknown method: reported by the method check


def _restrict(old: Any, new: Any, section: str) -> Any:
    """``methods=[irregular]`` keeps irregular's targets from the space (same for schedules)."""
    if not isinstance(old, Mapping) or not isinstance(new, (str, list)):
        return new
    by_name = {_canonical(section, n): v for n, v in old.items()}
    names = [_canonical(section, n) for n in ([new] if isinstance(new, str) else new)]
    return {n: by_name.get(n) for n in names}


def apply_override(raw: dict, text: str, problems: Problems) -> None:
    """Apply one ``key=value`` (dotted key, YAML value) to the raw mapping, in place."""
    key, sep, value_text = text.partition("=")
    if not sep or not key.strip():
        problems.add("--set", f"expected key=value, got {text!r}")
        return
    node: Any = raw
    try:
        path, value = override_path(key), load_yaml(value_text)
        for seg in path[:-1]:
            if isinstance(node, list):
                node = node[int(seg)]
            else:
                if not isinstance(node.get(seg), (dict, list)):
                    node[seg] = {}
                node = node[seg]
        last = path[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = _restrict(node.get(last), value, last) if len(path) == 1 else value
    except yaml.YAMLError as err:
        problems.add("--set", f"{text!r}: the value is not valid YAML ({err})")
    except (ValueError, IndexError, AttributeError, TypeError):
        problems.add("--set", f"cannot set {key!r}: no such place in the space")


# ------------------------------------------------------------------------- files and names
# ------------------------------------------------------------------------- reading
def _spaces_dir() -> Path:
    return Path(str(importlib.resources.files(SPACES_PACKAGE)))


def list_spaces() -> list[str]:
    """Names of the shipped spaces (``load_space(name)``)."""
    return sorted(p.stem for p in _spaces_dir().glob("*.yaml"))


def _read(spec: Union[str, os.PathLike, Mapping, None]) -> tuple[dict, Optional[Path], Path, Path]:
    """(mapping, source file, base for config_file, base for dense/data_root)."""
    cwd = Path.cwd()
    if isinstance(spec, Mapping):
        return copy.deepcopy(dict(spec)), None, cwd, cwd
    spec = DEFAULT_SPACE if spec is None else spec
    path = Path(spec).expanduser()
    if not path.is_file():
        shipped = _spaces_dir() / f"{spec}.yaml"
        if not shipped.is_file():
            raise SpaceError([f"no search space {str(spec)!r}: not a file, nor a shipped space{suggest(spec, list_spaces())}"])
        path = shipped
    path = path.resolve()
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SpaceError([f"not valid YAML: {err}"], str(path)) from None
    if not isinstance(raw, dict):
        raise SpaceError([f"a search space is a mapping, got {type(raw).__name__}"], str(path))
    raw.setdefault("name", path.stem)
    is_shipped = path.parent == _spaces_dir().resolve()
    return raw, path, path.parent, cwd if is_shipped else path.parent


def _absolutise(raw: dict, file_base: Path, path_base: Path) -> None:
    """Paths written in the file are relative to it (see the module doc); done before --set."""
    for key in ("dense", "data_root"):
        value = raw.get(key)
        if isinstance(value, str) and value != DENSE_TRAIN:
            raw[key] = value if "://" in value else str(path_base / Path(value).expanduser())  # a URI as it is
    for point in raw["points"] if isinstance(raw.get("points"), list) else []:
        if isinstance(point, dict) and isinstance(point.get("config_file"), str):
            point["config_file"] = str(file_base / Path(point["config_file"]).expanduser())
    # A sensitivity table is the user's file, relative to the space file like config_file.
    methods = raw.get("methods") if isinstance(raw.get("methods"), dict) else {}
    sections = [*methods.values(), raw.get("ratios"), *(raw["points"] if isinstance(raw.get("points"), list) else [])]
    for section in sections:
        alloc = section.get(ALLOCATION_KEY) if isinstance(section, dict) else None
        if isinstance(alloc, dict) and isinstance(alloc.get("table"), str):
            alloc["table"] = str(file_base / Path(alloc["table"]).expanduser())


def _reference_space(raw: Mapping, source: Optional[Path], method: Any) -> dict:
    """The reference project's ``prune_ratio`` YAML as a space: one fixed point, no search.

    Without ``--set method=...`` the method is ``nm`` for M:N targets, else ``irregular``.
    """
    ratios = raw[REFERENCE_KEY] if isinstance(raw[REFERENCE_KEY], Mapping) else {}
    inferred = "nm" if any(isinstance(v, str) for v in ratios.values()) else REFERENCE_DEFAULTS["method"]
    point: dict[str, Any] = {"method": method or inferred}
    point.update({"config_file": str(source)} if source else {"ratios": raw[REFERENCE_KEY]})
    name = source.stem if source else "reference"
    return {"name": name, "model": REFERENCE_DEFAULTS["model"], "dataset": REFERENCE_DEFAULTS["dataset"], "trials": 0, "points": [point]}


# ------------------------------------------------------------------------- public API
def load_space(spec: Union[str, os.PathLike, Mapping, None] = None, overrides: Sequence[str] = (),
               fields: Optional[Mapping[str, Any]] = None) -> SearchSpace:  # fmt: skip
    """Read, override and check a space; every problem is raised at once as ``SpaceError``.

    ``spec``: None (the shipped ``digits``), a shipped name, a file, or a mapping. ``fields``
    replace whole keys (Python values: ``raysweep.run(..., trials=8, model=MyNet)``), then
    ``overrides`` apply, ``key=value`` strings (dotted keys, YAML values). Dataset and dense
    weight files are not required to exist here: the sweep checks them.
    """
    raw, source, file_base, path_base = _read(spec)
    overrides = list(overrides)
    if REFERENCE_KEY in raw:
        method = next((load_yaml(o.partition("=")[2]) for o in overrides if o.partition("=")[0].strip() == "method"), None)
        overrides = [o for o in overrides if o.partition("=")[0].strip() != "method"]
        raw = _reference_space(raw, source, method)
    _absolutise(raw, file_base, path_base)
    raw.update(fields or {})  # Python values: paths among them are the caller's, resolved later
    problems = Problems()
    for text in overrides:
        apply_override(raw, text, problems)
    fields = parse_space(raw, problems)
    if problems.items:
        raise SpaceError(problems.items, f"search space {str(source or raw.get('name', 'mapping'))}")
    return SearchSpace(**fields, source=source)
