"""The mask parametrization, ``WeightMask``, and what works on every mask of a model: listing,
``squash`` and loading a checkpoint's masks into a fresh model.

A mask is a ``torch.nn.utils.parametrize`` parametrization whose ``mask`` and ``enforced`` are
*persistent* buffers, so a checkpoint carries the masks and a resumed trial keeps them. The
effective tensor is ``original * mask`` while enforced, so a pruned weight is exactly 0 through
any optimizer (momentum and weight decay act on ``original``, never on the product).
"""
from __future__ import annotations

import logging
import re
import weakref
from typing import Any, Iterator, Mapping, Optional

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from pruners.plan import Read, plain_reads
from pruners.ratio_config import strip_module_prefix
from pruners.targets import Target

__all__ = [
    "WeightMask", "entries", "is_masked", "load_masked_state_dict", "masked_parameters", "modules_of", "squash", "unwrap",
]

logger = logging.getLogger(__name__)

_SAFE_OPTION_TYPES = (bool, int, float, str, type(None))


def _checkpointable(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options that survive ``torch.load(weights_only=True)``; others are dropped with a warning."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        plain_list = isinstance(value, (list, tuple)) and all(isinstance(v, _SAFE_OPTION_TYPES) for v in value)
        if isinstance(value, _SAFE_OPTION_TYPES) or isinstance(value, torch.Tensor) or plain_list:
            out[key] = list(value) if plain_list else value
        else:
            logger.warning("mask option %r=%r is not saved in checkpoints (not a plain value)", key, value)
    return out


def _buffer_hooks() -> bool:
    """Whether global buffer registration hooks are set (``register_buffer`` must then run)."""
    return bool(getattr(nn.modules.module, "_global_buffer_registration_hooks", None))


class WeightMask(nn.Module):
    """Parametrization ``w -> w * mask`` while ``enforced``, else ``w`` (dense regrow phase).

    ``method``, ``target`` and ``options`` are bookkeeping for ``step``; they travel in the
    state dict as extra state (plain values), so a reloaded model can keep stepping. ``method``
    is empty for a mask that is only derived: ``follows`` (producer weights whose dead rows kill
    this tensor's rows) and ``reads`` (whose dead rows kill these input columns), see
    ``pruners.followers``. A checkpoint saved without them loads with neither.
    """

    def __init__(
        self,
        mask: torch.Tensor,
        method: str = "",
        target: Target = 0.0,
        *,
        enforced: bool = True,
        options: Optional[Mapping[str, Any]] = None,
        follows: tuple[Read, ...] = (),
        reads: tuple[Read, ...] = (),
        copy: bool = True,
    ) -> None:
        super().__init__()
        mask = mask.detach().to(torch.bool)
        # Persistent buffers straight into ``_buffers`` (register_buffer's name checks cost more than
        # the rest of this constructor), unless a global hook wants to see buffer registrations.
        buffers = {"mask": mask.clone() if copy else mask, "enforced": torch.tensor(bool(enforced), device=mask.device)}
        if _buffer_hooks():
            for name, value in buffers.items():
                self.register_buffer(name, value, persistent=True)
        else:
            self._buffers.update(buffers)
        # Plain attributes, set past nn.Module.__setattr__ (its checks cost more than the rest of
        # this constructor; a model may hold hundreds of masks).
        self.__dict__.update(
            method=method, target=target, options=dict(options or {}), follows=tuple(follows), reads=tuple(reads),
            _cache_key=(), _enforced_now=bool(enforced), _mask_f=None, _pruned=None,
        )  # fmt: skip
        self.method: str
        self.target: Target
        self.options: dict[str, Any]
        self.follows: tuple[Read, ...]
        self.reads: tuple[Read, ...]
        self._mask_f: Optional[torch.Tensor]

    def _key(self, dtype: torch.dtype) -> tuple:
        return (self.mask.data_ptr(), self.mask._version, self.enforced.data_ptr(), self.enforced._version, dtype)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        # One multiply by a cached float mask: cheaper than where() over a bool mask, which costs
        # ~10 passes over each weight per step (benchmarks/bench_masked_step.py). The cache is
        # rebuilt only when the buffers change (in-place edits bump a tensor's _version), so the
        # host reads `enforced` only then, not every forward.
        key = self._key(w.dtype)
        if key != self._cache_key:
            self._cache_key = key
            self._enforced_now = bool(self.enforced)
            self._mask_f = self.mask.to(w.dtype)
        return w * self._mask_f if self._enforced_now else w

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        return {**state, "_pruned": None}  # weak references to this process's tensors do not travel

    def mark_pruned(self, original: torch.Tensor) -> None:
        """``original`` was just multiplied by this mask (``pruners.step``): until it, the mask or
        ``enforced`` change in place or are replaced, ``original * mask`` is ``original`` itself."""
        self.__dict__["_pruned"] = (weakref.ref(original), original._version, weakref.ref(self.mask),
                                    self.mask._version, self.enforced._version)  # fmt: skip

    def is_pruned(self, w: torch.Tensor) -> bool:
        """Whether ``w`` (the original or a detached view of it) is as ``mark_pruned`` left it. Every
        in-place change through the tensor bumps its version (not one through ``.data``: don't)."""
        if self._pruned is None:
            return False
        ref, version, mask_ref, mask_version, enforced_version = self._pruned
        original = ref()
        return (original is not None and w.data_ptr() == original.data_ptr() and w.shape == original.shape
                and w._version == version and mask_ref() is self.mask and self.mask._version == mask_version
                and self.enforced._version == enforced_version)  # fmt: skip

    def effective(self, w: torch.Tensor) -> torch.Tensor:
        """``forward`` without autograd or cache updates: ``w`` itself where ``step`` has just
        hard-pruned it (no copy), else ``w`` times the float mask, the one the last forward left if
        current (a trained model's), else made from the bool mask's bytes (a uint8 to float
        conversion is ~10x faster on CPU than a bool one or a ``where`` on the bool mask)."""
        if not bool(self.enforced) or self.is_pruned(w):
            return w
        if self._mask_f is not None and self._key(w.dtype) == self._cache_key:
            return w * self._mask_f
        return w * self.mask.view(torch.uint8).to(w.dtype)

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        # Assigning ``module.weight = t`` stores ``t`` as the original (masked at forward).
        return w

    def get_extra_state(self) -> dict[str, Any]:
        state = {"method": self.method, "target": self.target, "options": _checkpointable(self.options)}
        if self.follows or self.reads:
            state.update(follows=[list(r) for r in self.follows], reads=[list(r) for r in self.reads])
        return state

    def set_extra_state(self, state: Any) -> None:
        if isinstance(state, Mapping):
            self.method = str(state.get("method", self.method))
            self.target = state.get("target", self.target)
            self.options = dict(state.get("options") or {})
            self.follows, self.reads = plain_reads(state.get("follows")), plain_reads(state.get("reads"))

    def extra_repr(self) -> str:
        kept = int(self.mask.sum())
        derived = f", follows={len(self.follows)}, reads={len(self.reads)}" if self.follows or self.reads else ""
        return f"method={self.method!r}, target={self.target!r}, kept={kept}/{self.mask.numel()}{derived}"


def unwrap(model: nn.Module) -> nn.Module:
    """The inner model of DDP / DataParallel (their parameter names carry ``module.``)."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


def modules_of(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``named_modules()`` without the masks' own modules (``parametrizations`` subtrees)."""
    out, seen, stack = [], set(), [("", model)]
    while stack:
        name, m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        out.append((name, m))
        children = [(f"{name}.{k}" if name else k, c) for k, c in m._modules.items() if c is not None and k != "parametrizations"]
        stack.extend(reversed(children))
    return out


def entries(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, WeightMask]]:
    """(user-facing name, owning module, tensor name, WeightMask) for every mask in ``model``."""
    for mod_name, module in modules_of(model):
        if "parametrizations" not in module._modules:
            continue
        for tensor_name, plist in module.parametrizations.items():
            for p in plist:
                if isinstance(p, WeightMask):
                    full = f"{mod_name}.{tensor_name}" if mod_name else tensor_name
                    yield strip_module_prefix(full), module, tensor_name, p


def masked_parameters(model: nn.Module) -> dict[str, WeightMask]:
    """User-facing parameter name (``block0.0.weight``) -> its ``WeightMask``."""
    return {name: wm for name, _, _, wm in entries(model)}


def is_masked(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` carries a ``WeightMask``."""
    return next(entries(model), None) is not None


def squash(model: nn.Module) -> nn.Module:
    """Remove the masks, leaving plain ``weight`` Parameters with the zeros in place (export).

    In place. Not on a ``copy.deepcopy`` of a masked model whose original is still used: torch
    shares the parametrized module class between the copies, and removing the parametrization
    from one deletes ``weight`` from the other; ``pruners.compact.squashed_copy`` is safe.
    """
    for mod_name, module in modules_of(model):
        holder = module._modules.get("parametrizations")
        if not isinstance(holder, nn.ModuleDict):
            continue
        masked = [t for t, plist in holder._modules.items() if any(isinstance(p, WeightMask) for p in plist._modules.values())]
        for tensor_name in masked:
            if not all(isinstance(p, WeightMask) for p in holder._modules[tensor_name]._modules.values()):
                name = strip_module_prefix(f"{mod_name}.{tensor_name}" if mod_name else tensor_name)
                raise ValueError(f"{name!r} has other parametrizations besides its mask; remove them first")
        if masked and not _squash_module(module):
            for tensor_name in masked:
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
    return model


@torch.no_grad()
def _squash_module(module: nn.Module) -> bool:
    """``remove_parametrizations(leave_parametrized=True)`` of every mask of ``module`` at once, when
    each is one ``WeightMask`` on a Parameter: each original Parameter (the same object, so an
    optimizer holding it still works) takes its effective value, with no copy where ``step`` has
    just hard-pruned it, and the module gets its class back. False (nothing done) otherwise."""
    holder = module._modules.get("parametrizations")
    cls = type(module)
    if not isinstance(holder, nn.ModuleDict) or not cls.__name__.startswith("Parametrized"):
        return False
    plists = list(holder._modules.items())
    if not all(len(pl._modules) == 1 and isinstance(pl._modules["0"], WeightMask) and type(pl.original) is nn.Parameter
               for _, pl in plists):  # fmt: skip
        return False
    for tensor_name, plist in plists:
        original = plist.original
        value = plist._modules["0"].effective(original.detach())
        if value.data_ptr() != original.data_ptr():
            original.set_(value)  # as remove_parametrizations does: the Parameter keeps its id
        module._parameters[tensor_name] = original
    del module._modules["parametrizations"]
    module.__class__ = cls.__bases__[0]  # the class itself is untouched: a deep copy sharing it keeps its masks
    return True


_MASK_KEY = re.compile(r"^(?:(?P<mod>.*)\.)?parametrizations\.(?P<tensor>[^.]+)\.(?P<idx>\d+)\.mask$")


def load_masked_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True
) -> Any:
    """Load a state dict saved from a masked model into a fresh (or masked) model.

    Masks are attached from the checkpoint's ``...parametrizations.<tensor>.<i>.mask`` and
    ``.enforced`` entries, so restoring needs no knowledge of targets. Keys may carry
    ``module.``. Returns ``load_state_dict``'s result (missing / unexpected keys).
    """
    inner = unwrap(model)
    sd = {strip_module_prefix(k): v for k, v in state_dict.items()}
    existing = {(id(module), tname) for _, module, tname, _ in entries(inner)}
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
