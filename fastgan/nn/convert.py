"""``fastgan.convert``: swap norm layers (+ ReLU / LeakyReLU) for the fused modules.

The norms it knows: BatchNorm1d/2d, GroupNorm, InstanceNorm2d (exact types:
subclasses may change the math).  Inside ``nn.Sequential`` containers a norm directly followed by a
ReLU or LeakyReLU becomes one fused module and the activation slot becomes
``nn.Identity`` (indices, and so state_dict keys, stay as they were).  In
other models the forward is traced with torch.fx; a norm whose only
user is a ReLU / LeakyReLU (module or functional) is fused there.  Where
tracing fails, every norm is still swapped for a fused module with the
identity activation and a warning says that the activations were left
unfused.  Weights, buffers and train/eval mode are kept.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_impl
from .batch_norm_act import from_batch_norm
from .group_norm_act import from_group_norm, from_instance_norm

_FUSERS = {nn.BatchNorm1d: from_batch_norm, nn.BatchNorm2d: from_batch_norm,
           nn.GroupNorm: from_group_norm, nn.InstanceNorm2d: from_instance_norm}


def _is_norm(module) -> bool:
    return type(module) in _FUSERS


def _fuse(norm, activation="identity", negative_slope=0.2, impl="auto"):
    return _FUSERS[type(norm)](norm, activation, negative_slope, impl)


def _activation_of(module):
    """(activation, negative_slope) for an activation module we can fuse, else None."""
    if isinstance(module, nn.ReLU):
        return "relu", 0.2
    if isinstance(module, nn.LeakyReLU):
        return "leaky_relu", float(module.negative_slope)
    return None


def _convert_sequential(seq: nn.Sequential, impl: str) -> None:
    names = list(seq._modules.keys())
    i = 0
    while i < len(names):
        module = seq._modules[names[i]]
        if _is_norm(module):
            nxt = seq._modules[names[i + 1]] if i + 1 < len(names) else None
            act = _activation_of(nxt) if nxt is not None else None
            if act is not None:
                seq._modules[names[i]] = _fuse(module, act[0], act[1], impl)
                seq._modules[names[i + 1]] = nn.Identity().train(nxt.training)
                i += 2
                continue
            seq._modules[names[i]] = _fuse(module, impl=impl)
        i += 1


def _convert_sequentials(model: nn.Module, impl: str) -> None:
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            _convert_sequential(module, impl)


def _swap_remaining(model: nn.Module, impl: str) -> None:
    """Every norm left becomes a fused module with the identity activation."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _is_norm(child):
                setattr(parent, name, _fuse(child, impl=impl))


def _functional_activation(node):
    """(activation, slope) when an fx node applies ReLU / LeakyReLU to one input."""
    if node.op != "call_function":
        return None
    if node.target in (F.relu, torch.relu):
        return "relu", 0.2
    if node.target is F.leaky_relu:
        slope = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01)
        return "leaky_relu", float(slope)
    return None


def _convert_fx(model: nn.Module, impl: str):
    import torch.fx

    gm = torch.fx.symbolic_trace(model)
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not _is_norm(modules.get(node.target)):
            continue
        bn = modules[node.target]
        users = list(node.users)
        act = None
        if len(users) == 1:
            user = users[0]
            if user.op == "call_module":
                act = _activation_of(modules.get(user.target))
            else:
                act = _functional_activation(user)
        fused = _fuse(bn, act[0] if act else "identity", act[1] if act else 0.2, impl)
        parent_name, _, attr = node.target.rpartition(".")
        setattr(gm.get_submodule(parent_name) if parent_name else gm, attr, fused)
        if act:
            user.replace_all_uses_with(node)
            gm.graph.erase_node(user)
    gm.graph.lint()
    gm.recompile()
    return gm


def convert(model: nn.Module, impl: str = "auto", sync: bool = False, process_group=None) -> nn.Module:
    """Fuse every BatchNorm / GroupNorm / InstanceNorm2d (+ReLU/LeakyReLU) of ``model``; returns the model.

    Sequential containers are converted in place, so a model whose
    norms all sit in Sequentials keeps its class; when norms remain
    elsewhere the model is traced with torch.fx and a ``GraphModule`` is
    returned.  ``sync=True`` then makes every fused batch norm a
    ``SyncBatchNormAct`` over ``process_group`` (``convert_sync``).
    """
    if sync:
        from .sync_batch_norm_act import convert_sync

        return convert_sync(convert(model, impl), process_group)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_impl(impl)  # before any layer is swapped: a bad name must not leave the model half converted
    if _is_norm(model):
        return _fuse(model, impl=impl)
    _convert_sequentials(model, impl)
    if not any(_is_norm(m) for m in model.modules()):
        return model
    try:
        return _convert_fx(model, impl)
    except Exception as exc:  # tracing failed: data-dependent control flow etc.
        warnings.warn(f"fastgan.convert: torch.fx could not trace {type(model).__name__} ({exc}); "
                      "its remaining norms were swapped without fusing their activations",
                      RuntimeWarning, stacklevel=2)
        _swap_remaining(model, impl)
        return model
