"""Fake (meta) implementations of the ``torch.ops.fastgan.*`` CUDA ops.

They give ``torch.compile`` (and meta / fake tensors) each op's output
shapes, dtypes and strides without running a kernel.  ``fastgan._ext.load()``
imports this module (and the other ops' ``_fake_*.py``) once the extension
is loaded; an op the loaded library does not register is skipped, as is one
that already has a fake or meta kernel, so importing it is always safe.

Output conventions (those of ``csrc/*.cpp`` and of the Triton twins in
``fastgan/kernels``): reductions return float32 tensors (float64 for float64
inputs) shaped like the per-channel arguments -- (C,) vectors, or (N, C)
tables for the per-sample norms; elementwise results are ``empty_like`` the
big input they follow, so they keep its dtype and strides.  With ``upscale``
r > 1 (pixel shuffle) x is a contiguous (N, C, H, W) tensor and the y-side
results (the forward's y, double_apply's ggy) are contiguous
(N, C / r^2, H r, W r); the x-side ones (dx, ggx) stay ``empty_like(x)``.
"""
from __future__ import annotations

from typing import Callable

import torch

from ._fake_registry import register_fakes

__all__ = ["FAKES", "registered"]


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _channel_vector(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[1],), dtype=_acc_dtype(x))


def _table(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A reduction's result: scale's shape, (C,) or (N, C), in the accumulator dtype."""
    return x.new_empty(tuple(scale.shape), dtype=_acc_dtype(x))


# ----------------------------------------------------------------------------- batch_norm_act


def _channel_stats(x):
    return _channel_vector(x), _channel_vector(x)


def _channel_stats_affine(x, weight, bias, running_mean, running_var, momentum, eps):
    return tuple(_channel_vector(x) for _ in range(5))


def _row_moments(x):
    shape = (x.shape[0], x.shape[1])
    return x.new_empty(shape, dtype=_acc_dtype(x)), x.new_empty(shape, dtype=_acc_dtype(x))


def _segment_stats(x, segments):
    shape = (segments, x.shape[1])
    return x.new_empty(shape, dtype=_acc_dtype(x)), x.new_empty(shape, dtype=_acc_dtype(x))


def _row_stats_affine(x, weight, bias, groups, eps):
    return tuple(x.new_empty((x.shape[0], x.shape[1]), dtype=_acc_dtype(x)) for _ in range(4))


def _check_upscale(op: str, x: torch.Tensor, upscale: int) -> None:
    """The checks of csrc/batch_norm_act.cpp (set_upscale) on x for ``upscale``."""
    if upscale < 1:
        raise ValueError(f"fastgan::{op}: upscale must be a positive int, got {upscale}")
    if upscale == 1:
        return
    if x.dim() != 4:  # (any layout: the ops read a contiguous copy, csrc/batch_norm_act.cpp upscale_input)
        raise ValueError(f"fastgan::{op}: upscale = {upscale} (pixel shuffle) needs x with shape "
                         f"(N, C, H, W), got shape {tuple(x.shape)} and strides {x.stride()}")
    if x.shape[1] % (upscale * upscale) != 0:
        raise ValueError(f"fastgan::{op}: upscale = {upscale} needs x's channels ({x.shape[1]}) divisible by "
                         f"upscale^2 = {upscale * upscale}, got x of shape {tuple(x.shape)}")


def _y_side(x: torch.Tensor, upscale: int) -> torch.Tensor:
    """A y-side output: like x, or the contiguous pixel_shuffle(x, upscale) shape."""
    if upscale == 1:
        return torch.empty_like(x)
    n, c, h, w = x.shape
    return x.new_empty((n, c // (upscale * upscale), h * upscale, w * upscale))


def _norm_act_forward(x, scale, shift, act, slope, upscale=1):
    _check_upscale("norm_act_forward", x, upscale)
    return _y_side(x, upscale)


def _norm_act_backward_reduce(gy, x, scale, shift, mean, invstd, act, slope, upscale=1):
    _check_upscale("norm_act_backward_reduce", x, upscale)
    return _table(x, scale), _table(x, scale)


def _norm_act_backward_reduce_coefficients(gy, x, scale, shift, mean, invstd, act, slope, groups, count,
                                           upscale=1):
    _check_upscale("norm_act_backward_reduce_coefficients", x, upscale)
    channels = (x.new_empty((scale.shape[-1],), dtype=_acc_dtype(x)) for _ in range(2))
    return (*(_table(x, scale) for _ in range(4)), *channels)


def _x_side(x: torch.Tensor, upscale: int) -> torch.Tensor:
    """An x-side output: like x, or (upscale > 1) contiguous, as the op's contiguous copy of x."""
    return torch.empty_like(x) if upscale == 1 else x.new_empty(x.shape)


def _norm_act_backward_apply(gy, x, scale, shift, mean, invstd, k1, k2, k3, act, slope, upscale=1):
    _check_upscale("norm_act_backward_apply", x, upscale)
    return _x_side(x, upscale)


def _norm_act_double_reduce(u, gy, x, scale, shift, mean, invstd, act, slope, upscale=1):
    _check_upscale("norm_act_double_reduce", x, upscale)
    return tuple(_table(x, scale) for _ in range(5))


def _norm_act_double_apply(u, gy, x, scale, shift, mean, invstd, a1, a2, a3, b1, b2, b3, b4, act, slope,
                           upscale=1):
    _check_upscale("norm_act_double_apply", x, upscale)
    return _x_side(x, upscale), (torch.empty_like(gy) if upscale == 1 else _y_side(x, upscale))


def _norm_act(x, weight, bias, mean, invstd, scale, shift, groups, batch_stats, act, slope, upscale=1):
    """The forward with C++ autograd (csrc/norm_act_autograd.cpp): its output is norm_act_forward's.
    Traced with autograd, its Function's kernels' ops (above) are what a graph records."""
    _check_upscale("norm_act", x, upscale)
    return _y_side(x, upscale)


def _norm_act_stats(x, weight, bias, running_mean, running_var, momentum, eps, groups, per_sample, act, slope,
                    upscale=1, segments=1):
    """The batch's statistics, then norm_act (csrc/norm_act_autograd.cpp); the running stats it updates in
    place are inputs, as channel_stats_affine's are."""
    _check_upscale("norm_act_stats", x, upscale)
    return _y_side(x, upscale)


# Op name (in the ``fastgan`` namespace) -> fake implementation (other op
# families keep theirs in their own _fake_*.py).
FAKES: dict[str, Callable] = {
    "channel_stats": _channel_stats,
    "channel_stats_affine": _channel_stats_affine,
    "row_moments": _row_moments,
    "segment_stats": _segment_stats,
    "row_stats_affine": _row_stats_affine,
    "norm_act_forward": _norm_act_forward,
    "norm_act": _norm_act,
    "norm_act_stats": _norm_act_stats,
    "norm_act_backward_reduce": _norm_act_backward_reduce,
    "norm_act_backward_reduce_coefficients": _norm_act_backward_reduce_coefficients,
    "norm_act_backward_apply": _norm_act_backward_apply,
    "norm_act_double_reduce": _norm_act_double_reduce,
    "norm_act_double_apply": _norm_act_double_apply,
}

registered: list[str] = register_fakes(FAKES)  # the ops whose fake this module registered
