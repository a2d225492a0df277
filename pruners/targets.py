"""What a prune target may be: a ratio of weights removed, or an M:N spec like ``m4n2``."""
from __future__ import annotations

import re
from typing import Optional, Union

Target = Union[float, str]

_NM = re.compile(r"^m(\d+)n(\d+)$")


def parse_nm(spec: str) -> tuple[int, int]:
    """``"mXnY"`` -> ``(X, Y)``: keep Y of every X consecutive weights (``m4n2`` is NVIDIA's 2:4)."""
    if not isinstance(spec, str):
        raise ValueError(f"M:N target must be a string like 'm4n2', got {spec!r}")
    m = _NM.match(spec.strip().lower())
    if m is None:
        raise ValueError(
            f"malformed M:N target {spec!r}: expected 'mXnY' with whole numbers, "
            "keeping Y of every X weights (e.g. 'm4n2' for 2:4)"
        )
    x, y = int(m.group(1)), int(m.group(2))
    if x <= 0 or y <= 0:
        raise ValueError(f"malformed M:N target {spec!r}: X and Y must be positive (got X={x}, Y={y})")
    if y >= x:
        raise ValueError(f"malformed M:N target {spec!r}: Y must be smaller than X (keep Y of every X)")
    return x, y


def validate_target(target: object) -> Target:
    """A float ratio in [0, 1] or a well-formed ``mXnY``; anything else is a ValueError."""
    if isinstance(target, bool):
        raise ValueError(f"prune target must be a ratio in [0, 1] or 'mXnY', got {target!r}")
    if isinstance(target, str):
        s = target.strip().lower()
        if _NM.match(s) or s.startswith("m"):
            parse_nm(s)
            return s
        try:
            target = float(s)
        except ValueError:
            raise ValueError(f"prune target must be a ratio in [0, 1] or 'mXnY', got {target!r}") from None
    if isinstance(target, (int, float)):
        ratio = float(target)
        if not 0.0 <= ratio <= 1.0 or ratio != ratio:
            raise ValueError(f"prune ratio {target!r} is outside [0, 1]")
        return ratio
    raise ValueError(f"prune target must be a ratio in [0, 1] or 'mXnY', got {target!r}")


def require_ratio(method: str, target: Target) -> float:
    """The ratio of a ratio-method's target; an M:N string is a clear ValueError."""
    if isinstance(target, str):
        raise ValueError(
            f"M:N targets like {target!r} belong to method 'nm'; "
            f"method {method!r} takes a ratio of groups removed in [0, 1]"
        )
    return float(target)


def require_nm(target: Target) -> Optional[tuple[int, int]]:
    """``(X, Y)`` of an ``mXnY`` target; ``None`` for the ratio 0.0 (dense, "not yet pruned").

    Schedules start every layer at 0.0, so N:M accepts exactly that ratio; any other ratio
    is a ValueError because N:M's sparsity is fixed by its spec, not by a ratio.
    """
    if isinstance(target, str):
        return parse_nm(target)
    if float(target) == 0.0:
        return None
    raise ValueError(
        f"method 'nm' takes an 'mXnY' target (e.g. 'm4n2' keeps 2 of every 4), got {target!r}; "
        "the only ratio it accepts is 0.0 (dense)"
    )



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
