"""Reading a space's text: a YAML loader that knows ``5e-4``, and ``--set key=value`` overrides.

Overrides edit the raw mapping before it is checked, so a bad override is reported like any
other problem. Keys are dotted paths; under ``methods.<m>.``, ``ratios.``,
``points.<i>.ratios.`` and ``<any of those>.allocation.perturb.`` the rest is one parameter
name or glob (dots included), except ``allocation`` itself (``methods.irregular.allocation.target``);
a quoted segment or one with ``*`` is taken whole.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import yaml

import pruners
from raysweep.space_validate import Problems

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
