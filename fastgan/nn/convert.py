"""``fastgan.convert``: swap norm layers (+ ReLU / LeakyReLU) for the fused modules.

The norms it knows: BatchNorm1d/2d, GroupNorm, InstanceNorm2d (exact types:
subclasses may change the math).  Inside ``nn.Sequential`` containers a norm directly followed by a
ReLU or LeakyReLU becomes one fused module and the activation slot becomes
``nn.Identity`` (indices, and so state_dict keys, stay as they were).  In
other models the forward is traced with torch.fx; a norm whose only
user is a ReLU / LeakyReLU (module or functional) is fused there.  Where
tracing fails, every norm is still swapped for a fused module with the
identity activation and a warning says that the activations were left
unfused.  Weights, buffers, train/eval mode and which parameters are frozen
are kept.  A norm module the model uses at more than one place (shared
between containers, or called twice in one forward) stays one module: it
becomes one fused module with the identity activation, used wherever the
norm was, and its activations stay where they were (fusing one call's
activation would apply it to every call).
"""
from __future__ import annotations

import collections
import warnings

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ._checks import check_impl
from .batch_norm_act import from_batch_norm
from .group_norm_act import from_group_norm, from_instance_norm

_FUSERS = {nn.BatchNorm1d: from_batch_norm, nn.BatchNorm2d: from_batch_norm,
           nn.GroupNorm: from_group_norm, nn.InstanceNorm2d: from_instance_norm}


def _is_norm(module) -> bool:
    return type(module) in _FUSERS


def _activation_of(module):
    """(activation, negative_slope) for an activation module we can fuse, else None."""
    if isinstance(module, nn.ReLU):
        return "relu", 0.2
    if isinstance(module, nn.LeakyReLU):
        return "leaky_relu", float(module.negative_slope)
    return None


class _Fuser:
    """Fused replacements for ``model``'s norms: a norm found at more than one place in the module tree
    gets one fused module (identity activation), handed out at every place, so that it stays shared."""

    def __init__(self, model: nn.Module, impl: str):
        places = collections.Counter(id(m) for _, m in model.named_modules(remove_duplicate=False) if _is_norm(m))
        self.shared = {key for key, n in places.items() if n > 1}
        self.impl = impl
        self._made = {}  # id(norm) -> (norm, its fused module); the norm kept alive so that its id stays its own

    def share(self, norms) -> None:
        """Also treat ``norms`` as shared (a module the traced forward calls more than once)."""
        self.shared.update(id(norm) for norm in norms)

    def can_fuse_activation(self, norm) -> bool:
        return id(norm) not in self.shared

    def __call__(self, norm, activation="identity", negative_slope=0.2):
        if not self.can_fuse_activation(norm):
            made = self._made.get(id(norm))
            if made is None:
                made = self._made[id(norm)] = (norm, _FUSERS[type(norm)](norm, "identity", 0.2, self.impl))
            return made[1]
        return _FUSERS[type(norm)](norm, activation, negative_slope, self.impl)


def _convert_sequential(seq: nn.Sequential, fuse: _Fuser) -> None:
    names = list(seq._modules.keys())
    i = 0
    while i < len(names):
        module = seq._modules[names[i]]
        if _is_norm(module):
            nxt = seq._modules[names[i + 1]] if i + 1 < len(names) else None
            act = _activation_of(nxt) if nxt is not None and fuse.can_fuse_activation(module) else None
            if act is not None:
                seq._modules[names[i]] = fuse(module, act[0], act[1])
                seq._modules[names[i + 1]] = nn.Identity().train(nxt.training)
                i += 2
                continue
            seq._modules[names[i]] = fuse(module)
        i += 1


def _convert_sequentials(model: nn.Module, fuse: _Fuser) -> None:
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            _convert_sequential(module, fuse)


def _swap_remaining(model: nn.Module, fuse: _Fuser) -> None:
    """Every norm left becomes a fused module with the identity activation."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _is_norm(child):
                setattr(parent, name, fuse(child))


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


class _Tracer(torch.fx.Tracer):
    """fastgan's own modules are leaves: their forwards check their inputs, which a tracing proxy fails."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m).__module__.startswith("fastgan.nn.") or super().is_leaf_module(m, qualname)


def _convert_fx(model: nn.Module, fuse: _Fuser):
    graph = _Tracer().trace(model)
    gm = torch.fx.GraphModule(model, graph, type(model).__name__)
    modules = dict(gm.named_modules())
    calls = collections.Counter(node.target for node in gm.graph.nodes if node.op == "call_module")
    fuse.share(modules[target] for target, n in calls.items() if n > 1 and _is_norm(modules.get(target)))
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not _is_norm(modules.get(node.target)):
            continue
        bn = modules[node.target]
        users = list(node.users)
        act = None
        if len(users) == 1 and fuse.can_fuse_activation(bn):
            user = users[0]
            if user.op == "call_module":
                act = _activation_of(modules.get(user.target))
            else:
                act = _functional_activation(user)
        fused = fuse(bn, *act) if act else fuse(bn)
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
        return _FUSERS[type(model)](model, "identity", 0.2, impl)
    fuse = _Fuser(model, impl)
    _convert_sequentials(model, fuse)
    if not any(_is_norm(m) for m in model.modules()):
        return model
    try:
        return _convert_fx(model, fuse)
    except Exception as exc:  # tracing failed: data-dependent control flow etc.
        warnings.warn(f"fastgan.convert: torch.fx could not trace {type(model).__name__} ({exc}); "
                      "its remaining norms were swapped without fusing their activations",
                      RuntimeWarning, stacklevel=2)
        _swap_remaining(model, fuse)
        return model
