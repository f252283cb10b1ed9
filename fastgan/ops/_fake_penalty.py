"""Fake (meta) implementations of the gradient-penalty CUDA ops ``torch.ops.fastgan.penalty_*``.

They give ``torch.compile`` (and meta / fake tensors) each op's output shapes,
dtypes and strides without running a kernel.  Import this module once the
extension is loaded (as ``fastgan.ops._fake``); an op the loaded library does
not register is skipped, as is one that already has a fake or meta kernel,
so importing it is always safe.

Conventions (``csrc/penalty.cpp`` and the Triton twins in
``fastgan/kernels/penalty.py``): per-sample results are (N,) and scalars
0-dim, in float32 (float64 for float64 inputs); elementwise results are
``empty_like`` the big input they follow; an output that is not needed is an
empty (0,) tensor of the input's dtype.
"""
from __future__ import annotations

from typing import Callable

import torch

from ._fake_registry import register_fakes

__all__ = ["FAKES", "registered"]


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _penalty_interpolate(real, fake, epsilon):
    return torch.empty_like(real)


def _penalty_interpolate_backward(grad, epsilon, need_real, need_fake):
    d_real = torch.empty_like(grad) if need_real else grad.new_empty((0,))
    d_fake = torch.empty_like(grad) if need_fake else grad.new_empty((0,))
    return d_real, d_fake


def _penalty_epsilon_grad(grad, real, fake):
    return grad.new_empty((grad.shape[0],), dtype=_acc_dtype(grad))


def _penalty_forward(grad, mode, center):
    return grad.new_empty((), dtype=_acc_dtype(grad)), grad.new_empty((grad.shape[0],), dtype=_acc_dtype(grad))


def _penalty_backward(grad_value, grad, norms, mode, center):
    return torch.empty_like(grad)


FAKES: dict[str, Callable] = {
    "penalty_interpolate": _penalty_interpolate,
    "penalty_interpolate_backward": _penalty_interpolate_backward,
    "penalty_epsilon_grad": _penalty_epsilon_grad,
    "penalty_forward": _penalty_forward,
    "penalty_backward": _penalty_backward,
}

registered: list[str] = register_fakes(FAKES)  # the ops whose fake this module registered
