"""Pruning schedules: pure functions of the epoch, so a resumed trial needs only the epoch.

A schedule answers, for each epoch, a ``Phase``: how far along each layer's final target the
masks are (``fraction``), whether to recompute them at the start of the epoch, and whether
they are enforced (False = pruned weights may regrow, the reference project's dense phase).
``final_epoch`` is the first epoch at final sparsity with frozen masks: best accuracy may
only be taken from there on (the reference project picks its "best" from a dense phase).
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Union, runtime_checkable

__all__ = ["AGP", "OneShot", "Phase", "Regrow", "SCHEDULES", "Schedule", "get_schedule", "register_schedule"]


@dataclass(frozen=True)
class Phase:
    """What the training loop does in one epoch."""

    fraction: float  # of each layer's final target (see masking.scale_target)
    recompute: bool  # recompute masks at the start of this epoch
    enforce: bool  # masks enforced; False = pruned weights may regrow


@runtime_checkable
class Schedule(Protocol):
    """Anything with ``phase(epoch)`` and ``final_epoch`` is a schedule."""

    final_epoch: int

    def phase(self, epoch: int) -> Phase: ...


SCHEDULES: dict[str, type] = {}


def register_schedule(name: str) -> Callable[[type], type]:
    """Class decorator: make a schedule available to ``get_schedule(name, **params)``."""

    def decorator(cls: type) -> type:
        SCHEDULES[name] = cls
        cls.schedule_name = name  # type: ignore[attr-defined]
        return cls

    return decorator


def _check_epoch(epoch: int) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
    return epoch


def _require_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


@register_schedule("oneshot")
@dataclass(frozen=True)
class OneShot:
    """Prune once at epoch 0 to the final targets, then fine-tune with frozen masks."""

    @property
    def final_epoch(self) -> int:
        return 0

    def phase(self, epoch: int) -> Phase:
        return Phase(fraction=1.0, recompute=_check_epoch(epoch) == 0, enforce=True)


@register_schedule("regrow")
@dataclass(frozen=True)
class Regrow:
    """The reference project's regrow-then-fix.

    Before ``retrain_epoch`` masks are recomputed every ``prune_freq`` epochs (pruned weights
    zeroed, then free to regrow: not enforced); at ``retrain_epoch`` they are recomputed once
    more and enforced from then on.
    """

    prune_freq: int
    retrain_epoch: int

    def __post_init__(self) -> None:
        _require_int("prune_freq", self.prune_freq, 1)
        _require_int("retrain_epoch", self.retrain_epoch, 0)

    @property
    def final_epoch(self) -> int:
        return self.retrain_epoch

    def phase(self, epoch: int) -> Phase:
        e = _check_epoch(epoch)
        if e < self.retrain_epoch:
            return Phase(fraction=1.0, recompute=e % self.prune_freq == 0, enforce=False)
        return Phase(fraction=1.0, recompute=e == self.retrain_epoch, enforce=True)


@register_schedule("agp")
@dataclass(frozen=True, kw_only=True)
class AGP:
    """Automated gradual pruning (Zhu & Gupta 2017), cubic.

    fraction_t = 1 + (initial - 1) * (1 - (t - t0) / (n * dt))**3 with t clipped to
    [start_epoch, end_epoch], n * dt = end_epoch - start_epoch. Masks are recomputed at
    ``start_epoch``, every ``frequency`` epochs after it, and always at ``end_epoch``; between
    recomputes the fraction stays at the last recompute's value (the sparsity the model
    actually has, as in the paper's discrete steps). Fraction 0 before ``start_epoch``.
    """

    end_epoch: int
    start_epoch: int = 0
    frequency: int = 1
    initial: float = 0.0

    def __post_init__(self) -> None:
        _require_int("start_epoch", self.start_epoch, 0)
        _require_int("end_epoch", self.end_epoch, 0)
        _require_int("frequency", self.frequency, 1)
        if self.end_epoch <= self.start_epoch:
            raise ValueError(f"end_epoch ({self.end_epoch}) must be after start_epoch ({self.start_epoch})")
        if isinstance(self.initial, bool) or not isinstance(self.initial, (int, float)) or not 0.0 <= self.initial < 1.0:
            raise ValueError(f"initial must be in [0, 1), got {self.initial!r}")

    @property
    def final_epoch(self) -> int:
        return self.end_epoch

    def fraction_at(self, t: float) -> float:
        """The cubic curve itself, t clipped to [start_epoch, end_epoch]."""
        t = min(max(t, self.start_epoch), self.end_epoch)
        progress = (t - self.start_epoch) / (self.end_epoch - self.start_epoch)
        return 1.0 + (float(self.initial) - 1.0) * (1.0 - progress) ** 3

    def _is_recompute(self, e: int) -> bool:
        if e < self.start_epoch or e > self.end_epoch:
            return False
        return e == self.end_epoch or (e - self.start_epoch) % self.frequency == 0

    def phase(self, epoch: int) -> Phase:
        e = _check_epoch(epoch)
        if e < self.start_epoch:
            return Phase(fraction=0.0, recompute=False, enforce=True)
        if e >= self.end_epoch:
            return Phase(fraction=1.0, recompute=e == self.end_epoch, enforce=True)
        last = self.start_epoch + ((e - self.start_epoch) // self.frequency) * self.frequency
        return Phase(fraction=self.fraction_at(last), recompute=self._is_recompute(e), enforce=True)


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


def get_schedule(name_or_obj: Union[str, Mapping[str, Any], Schedule], **params: Any) -> Schedule:
    """A schedule from its name and parameters, a ``{"name": ..., **params}`` mapping, or itself.

    Unknown names suggest the nearest; unknown or invalid parameters are a ValueError.
    """
    if isinstance(name_or_obj, Mapping):
        spec = dict(name_or_obj)
        if "name" not in spec:
            raise ValueError(f"schedule mapping needs a 'name' key, got {sorted(spec)}")
        name = spec.pop("name")
        return get_schedule(name, **{**spec, **params})
    if not isinstance(name_or_obj, str):
        if isinstance(name_or_obj, Schedule):
            if params:
                raise ValueError("parameters cannot be given with a schedule object")
            return name_or_obj
        raise ValueError(f"schedule must be a name or a schedule, got {name_or_obj!r}")
    key = name_or_obj.strip().lower()
    if key not in SCHEDULES:
        close = difflib.get_close_matches(key, list(SCHEDULES), n=1, cutoff=0.0)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown schedule {name_or_obj!r}{hint} (known: {', '.join(SCHEDULES)})")
    cls = SCHEDULES[key]
    fields = _field_names(cls)
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ValueError(f"schedule {key!r} takes parameters {fields}, not {unknown}")
    try:
        return cls(**params)
    except TypeError as err:  # a required parameter is missing
        raise ValueError(f"schedule {key!r}: {err} (parameters: {fields})") from None
