"""Registering a mask parametrization cheaply: what ``parametrize.register_parametrization`` builds, without its generic steps.

Why: ``prepare`` registers one mask per tensor it masks (hundreds on a ResNet or RegNet), and
torch's generic path (``train()`` on the parametrization, ``ModuleList.extend``, probing
``right_inverse``, ``set_`` of the tensor onto itself, ``Module.__setattr__`` checks) costs several
times the structure it leaves. ``register_mask`` leaves the same structure (the module's class made
``Parametrized<Class>`` by torch's own helper, ``module.parametrizations[tensor]`` a
``ParametrizationList`` holding the mask at ``0`` and the tensor as ``original``), so everything that
reads or removes parametrizations (``squash``, ``state_dict``, ``remove_parametrizations``) works
as before. Anything unusual (a buffer, a Parameter subclass, registration hooks, swapping tensors on
conversion, a tensor already parametrized) goes through torch's own function.
"""
from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn.modules import module as module_mod
from torch.nn.utils import parametrize

__all__ = ["is_parametrized", "register_mask"]

logger = logging.getLogger(__name__)


def _fast_path_ok(module: nn.Module, tensor_name: str) -> bool:
    """Whether torch's generic registration would do nothing beyond what ``register_mask`` does."""
    original = module._parameters.get(tensor_name)
    if type(original) is not nn.Parameter or torch.__future__.get_swap_module_params_on_conversion():
        return False
    if module_mod._global_parameter_registration_hooks or module_mod._global_module_registration_hooks:
        return False
    existing = module._modules.get("parametrizations")
    if existing is None:
        return "parametrizations" not in module.__dict__ and not hasattr(type(module), "parametrizations")
    return type(existing) is nn.ModuleDict and tensor_name not in existing._modules


def register_mask(module: nn.Module, tensor_name: str, mask: nn.Module) -> None:
    """``parametrize.register_parametrization(module, tensor_name, mask, unsafe=True)``, built directly.

    ``mask`` must be a parametrization whose ``right_inverse`` is the identity and which has no
    submodules (``WeightMask``): the tensor becomes ``original`` as it is.
    """
    if not _fast_path_ok(module, tensor_name):
        parametrize.register_parametrization(module, tensor_name, mask, unsafe=True)
        return
    original = module._parameters[tensor_name]
    mask.__dict__["training"] = module.training  # what register_parametrization's mask.train(module.training) sets
    plist = parametrize.ParametrizationList.__new__(parametrize.ParametrizationList)
    nn.Module.__init__(plist)
    plist._modules["0"] = mask
    plist.__dict__.update(unsafe=True, is_tensor=True, ntensors=1)
    plist._parameters["original"] = original
    del module._parameters[tensor_name]
    holder = module._modules.get("parametrizations")
    if holder is None:
        parametrize._inject_new_class(module)
        holder = nn.ModuleDict()
        module._modules["parametrizations"] = holder
    parametrize._inject_property(module, tensor_name)
    holder._modules[tensor_name] = plist


def is_parametrized(module: nn.Module, tensor_name: str | None = None) -> bool:
    """``parametrize.is_parametrized`` without its ``getattr``, which on a plain module raises (and
    catches) an AttributeError: compaction asks it of every tensor it cuts."""
    holder = module._modules.get("parametrizations")
    if not isinstance(holder, nn.ModuleDict):
        return False
    return len(holder) > 0 if tensor_name is None else tensor_name in holder._modules
