"""What a fused module built from a torch.nn norm layer takes over from it."""
from __future__ import annotations

from torch import nn


def take_over(source: nn.Module, fused: nn.Module) -> nn.Module:
    """``fused`` with ``source``'s parameters and buffers (by name), which of its parameters are frozen
    (a converted model must train the same parameters as before), and its train / eval mode."""
    fused.load_state_dict(source.state_dict())
    for name, p in source.named_parameters(recurse=False):
        getattr(fused, name).requires_grad_(p.requires_grad)
    return fused.train(source.training)


def drop_bias(module: nn.Module, bias: bool) -> None:
    """``bias=False`` (as torch's norm layers take it): an affine layer with a scale and no shift, its
    ``bias`` None -- the state dict of ``nn.BatchNorm2d(C, bias=False)`` and the others loads both ways."""
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
    if not bias and getattr(module, "affine", False):
        module.register_parameter("bias", None)


def placement(source: nn.Module) -> dict:
    """``device`` and ``dtype`` of ``source``'s weight (or running mean): a fused twin is built like it."""
    ref = getattr(source, "weight", None)
    ref = ref if ref is not None else getattr(source, "running_mean", None)
    return dict(device=None if ref is None else ref.device, dtype=None if ref is None else ref.dtype)
