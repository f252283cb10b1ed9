"""Fused group / instance / layer norm + activation: per-sample statistics.

Statistics come from per-(n, c) moments (Welford within rows) merged exactly
into groups (Chan's formula with equal counts) by ``group_stats_affine``, both
in one call (``row_stats_affine``); the
normalize + affine + activation and its derivatives are the family's shared
Functions (``_norm_act.py``) with (N, C) tables.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _backend, reference
from .._activation import activation_code
from .._validation import (check_channel_vector, check_momentum_factor, check_positive_float, check_tensor,
                           usual_norm_arguments)
from ..reference.batch_norm_act import update_running_stats
from . import _norm_act
from ._layout import kernel_layout
from ._norm_act import Grouping, detached_param, norm_act
from .batch_norm_act import batch_norm_act

__all__ = ["group_norm_act", "instance_norm_act", "layer_norm_act"]


def _check_common(x, weight, bias, eps, min_dim=2):
    if usual_norm_arguments(x, (weight, bias), eps, min_dim):
        return  # the usual valid call, in one pass; anything else meets the checks below
    check_tensor("x", x, min_dim=min_dim)
    for name, t in (("weight", weight), ("bias", bias)):
        check_channel_vector(name, t, x.shape[1], x.device)
    check_positive_float("eps", eps)


def _fused(x, groups, weight, bias, eps, act, slope, backend, running=None, momentum=0.1):
    x = kernel_layout(x)
    k = _backend.kernels(backend, "batch_norm_act")
    n, c = x.shape[0], x.shape[1]
    if running is None and backend == "cuda" and _norm_act.cpp_autograd_fits(weight, bias, n):
        # statistics and the fused forward in one call, its autograd C++ (csrc/norm_act_autograd.cpp)
        return k.norm_act_stats(x, weight, bias, None, None, 0.0, float(eps), groups, True, act, slope)
    spatial = x.numel() // (n * c)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    w, b = detached_param(weight, dtype), detached_param(bias, dtype)
    # x detached: norm_act differentiates through the statistics itself
    if running is None:  # one call: the per-(n, c) moments, then their group merge, invstd and affine tables
        mean_t, invstd_t, scale_t, shift_t = k.row_stats_affine(x.detach(), w, b, groups, float(eps))
    else:  # instance norm's running stats need the per-instance moments: two calls
        row_mean, row_m2 = k.row_moments(x.detach())
        update_running_stats(running[0], running[1], row_mean.mean(0), (row_m2 / spatial).mean(0),
                             spatial, momentum)
        mean_t, invstd_t, scale_t, shift_t = k.group_stats_affine(row_mean, row_m2, w, b, groups, spatial,
                                                                  float(eps))
    return norm_act(x, weight, bias, mean_t, invstd_t, Grouping(True, groups), act, slope, backend, scale_t,
                    shift_t)


def group_norm_act(x: torch.Tensor, num_groups: int, weight: Optional[torch.Tensor] = None,
                   bias: Optional[torch.Tensor] = None, eps: float = 1e-5, activation: str = "leaky_relu",
                   negative_slope: float = 0.2, impl: str = "auto") -> torch.Tensor:
    """``act(F.group_norm(x, num_groups, weight, bias, eps))`` fused; twice differentiable."""
    _check_common(x, weight, bias, eps)
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
    if x.shape[1] % num_groups:
        raise ValueError(f"num_groups={num_groups} must divide the {x.shape[1]} channels of x")
    act, slope = activation_code(activation, negative_slope)
    backend = _backend.resolve(impl, x.device, "group_norm_act")
    if backend == "ref" or x.numel() == 0:
        return reference.group_norm_act(x, num_groups, weight, bias, eps, activation, negative_slope)
    return _fused(x, num_groups, weight, bias, eps, act, slope, backend)


def layer_norm_act(x: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                   eps: float = 1e-5, activation: str = "leaky_relu", negative_slope: float = 0.2,
                   impl: str = "auto") -> torch.Tensor:
    """Per-sample statistics over (C, *spatial), per-channel affine: ``GroupNorm(1, C)``
    followed by the activation (the WGAN-GP critic's normalisation)."""
    return group_norm_act(x, 1, weight, bias, eps, activation, negative_slope, impl)


def instance_norm_act(x: torch.Tensor, running_mean: Optional[torch.Tensor] = None,
                      running_var: Optional[torch.Tensor] = None, weight: Optional[torch.Tensor] = None,
                      bias: Optional[torch.Tensor] = None, use_input_stats: bool = True, momentum: float = 0.1,
                      eps: float = 1e-5, activation: str = "leaky_relu", negative_slope: float = 0.2,
                      impl: str = "auto") -> torch.Tensor:
    """``act(F.instance_norm(...))`` fused, running stats included: with
    ``use_input_stats`` each (sample, channel) is normalised over its spatial
    positions and the running stats, when given, are updated with the batch
    means of the per-instance statistics; without, the running stats are used
    (then it is batch norm in eval mode)."""
    _check_common(x, weight, bias, eps, min_dim=3)
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        check_channel_vector(name, t, x.shape[1], x.device)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (or both None)")
    if use_input_stats and running_mean is not None:
        check_momentum_factor(momentum)
    if not use_input_stats:
        if running_mean is None:
            raise ValueError("running_mean and running_var are required when use_input_stats=False")
        return batch_norm_act(x, running_mean, running_var, weight, bias, False, momentum, eps,
                              activation, negative_slope, impl)
    if x.numel() // max(x.shape[0] * x.shape[1], 1) == 1 and x.numel() > 0:
        raise ValueError(f"x must have more than 1 spatial element when training, got input size {tuple(x.shape)}")
    act, slope = activation_code(activation, negative_slope)
    backend = _backend.resolve(impl, x.device, "instance_norm_act")
    if backend == "ref" or x.numel() == 0:
        return reference.instance_norm_act(x, running_mean, running_var, weight, bias, True, momentum, eps,
                                           activation, negative_slope)
    running = None if running_mean is None else (running_mean, running_var)
    return _fused(x, x.shape[1], weight, bias, eps, act, slope, backend, running, momentum)
