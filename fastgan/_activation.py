"""The activations a fused kernel can apply, and their codes for the kernels."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._validation import is_finite_number

ACTIVATIONS = {"identity": 0, "relu": 1, "leaky_relu": 2}


def activation_code(activation: str, negative_slope: float) -> tuple[int, float]:
    """(kernel code, slope of the negative side) for ``activation``.

    Kernels compute ``act(z) = z if z > 0 else slope * z`` (identity: slope 1,
    relu: slope 0), and its derivative the same way, as PyTorch does.
    """
    if activation is None:
        activation = "identity"
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)):
        raise TypeError(f"negative_slope must be a float, got {type(negative_slope).__name__}")
    if not is_finite_number(negative_slope):  # inf * z would make finite inputs non-finite
        raise ValueError(f"negative_slope must be finite, got {negative_slope}")
    code = ACTIVATIONS[activation]
    slope = {0: 1.0, 1: 0.0, 2: float(negative_slope)}[code]
    return code, slope


def apply_activation(z: torch.Tensor, activation: str, negative_slope: float) -> torch.Tensor:
    """The activation in plain PyTorch (differentiable to any order)."""
    if activation in (None, "identity"):
        return z
    if activation == "relu":
        return F.relu(z)
    if activation == "leaky_relu":
        return F.leaky_relu(z, negative_slope)
    raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")


def activation_repr(module) -> str:
    """``activation=leaky_relu, negative_slope=0.2`` (+ ``, impl='...'`` when not auto) for extra_repr."""
    act = module.activation
    if act == "leaky_relu":
        act += f", negative_slope={module.negative_slope}"
    impl = getattr(module, "impl", "auto")
    return f"activation={act}" + ("" if impl == "auto" else f", impl={impl!r}")
