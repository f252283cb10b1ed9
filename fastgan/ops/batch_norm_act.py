"""Fused batch norm + activation: statistics, running stats, dispatch.

Statistics per channel over (N, *spatial) come from one kernel (Welford /
Chan, float32); the fused normalize + affine + activation and its first and
second derivatives are the family's shared Functions (``_norm_act.py``).
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
from ._norm_act import Grouping, detached_param, kernel_running_stats, norm_act

__all__ = ["batch_norm_act"]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def usual_running_arguments(running_mean, running_var, training, momentum) -> bool:
    """Whether the running-stat arguments are the usual valid ones (see ``check_running_arguments``), in one pass."""
    return ((running_mean is None) == (running_var is None) and (training or running_mean is not None)
            and (not training or running_mean is None or (type(momentum) is float and 0.0 <= momentum <= 1.0))
            and (running_mean is None or not (running_mean.requires_grad or running_var.requires_grad)))


def check_running_arguments(channels, device, running_mean, running_var, weight, bias, training, momentum, eps):
    """The checks batch norm's variants share, naming the argument: running stats, weight and bias None or
    ``channels``-long vectors on ``device``, the running stats given together (and when not training) and not
    requiring grad, a positive eps, and a momentum in [0, 1] where the running stats are updated."""
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        check_channel_vector(name, t, channels, device)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (or both None)")
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t is not None and t.requires_grad:  # (F.batch_norm refuses them too; a backend would drop the gradient)
            raise ValueError(f"{name} must not require grad: batch norm is not differentiable w.r.t. its running "
                             "statistics (they are buffers; detach them)")
    if not training and running_mean is None:
        raise ValueError("running_mean and running_var are required when training=False")
    check_positive_float("eps", eps)
    if training and running_mean is not None:
        check_momentum_factor(momentum)


def check_arguments(x, running_mean, running_var, weight, bias, training, momentum, eps, *, local_batch=True):
    """Argument checks of batch_norm_act; ``local_batch=False`` (sync batch norm) leaves the count of values per
    channel to the caller, as this rank's batch alone may be tiny or empty."""
    if (usual_norm_arguments(x, (running_mean, running_var, weight, bias), eps)
            and usual_running_arguments(running_mean, running_var, training, momentum)
            and not (local_batch and training and x.numel() == x.shape[1])):
        return  # the usual valid call, in one pass; anything else meets the checks below
    check_tensor("x", x, min_dim=2)
    channels = x.shape[1]
    check_running_arguments(channels, x.device, running_mean, running_var, weight, bias, training, momentum, eps)
    if local_batch and training and x.numel() // max(channels, 1) == 1:
        raise ValueError(f"x must have more than 1 value per channel when training, got input size {tuple(x.shape)}")


def check_segments(x, segments, training) -> None:
    """``segments``: a positive int dividing x's batch, each part with more than 1 value per channel
    when training."""
    if type(segments) is int and segments == 1:
        return
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
        raise ValueError(f"segments must be a positive int, got {segments!r}")
    if x.shape[0] % segments:
        raise ValueError(f"segments={segments} must divide x's batch size {x.shape[0]} (equal parts)")
    if training and x.numel() and x.numel() // (x.shape[1] * segments) == 1:
        raise ValueError(f"each of the {segments} segments of x must have more than 1 value per channel when "
                         f"training, got input size {tuple(x.shape)}")


def batch_norm_act(x: torch.Tensor, running_mean: Optional[torch.Tensor] = None,
                   running_var: Optional[torch.Tensor] = None, weight: Optional[torch.Tensor] = None,
                   bias: Optional[torch.Tensor] = None, training: bool = True, momentum: float = 0.1,
                   eps: float = 1e-5, activation: str = "leaky_relu", negative_slope: float = 0.2,
                   impl: str = "auto", *, segments: int = 1) -> torch.Tensor:
    """``act(F.batch_norm(x, ...))`` in one fused op, with the same semantics.

    x is (N, C) or (N, C, *spatial), float32 / float16 / bfloat16 (float64
    too), contiguous or channels-last.  With ``training=True`` batch
    statistics are used and, when given, ``running_mean`` / ``running_var``
    are updated in place (unbiased variance, factor ``momentum``: a float in [0, 1]; the
    modules' ``momentum=None``, a cumulative average, passes 1 / num_batches_tracked here).
    ``activation`` is ``"leaky_relu"`` (``negative_slope``), ``"relu"`` or
    ``"identity"``.  Differentiable twice (gradient penalties).

    ``segments`` > 1: x's batch is that many equal parts of consecutive
    samples (e.g. ``torch.cat([real, fake])``), each normalised with its own
    batch statistics -- the layer run on each part alone, the running stats
    updated once per part in order -- in one pass of the same kernels.
    Running statistics (eval mode) are the same for every part.
    """
    check_arguments(x, running_mean, running_var, weight, bias, training, momentum, eps)
    check_segments(x, segments, training)
    act, slope = activation_code(activation, negative_slope)
    backend = _backend.resolve(impl, x.device, "batch_norm_act")
    if backend == "ref" or x.numel() == 0:
        return reference.batch_norm_act(x, running_mean, running_var, weight, bias, training,
                                        momentum, eps, activation, negative_slope, segments)
    x = kernel_layout(x)
    k = _backend.kernels(backend, "batch_norm_act")
    dtype = _compute_dtype(x)
    use_batch_stats = bool(training) or running_mean is None
    if segments > 1 and use_batch_stats:
        return _segmented(x, running_mean, running_var, weight, bias, training, momentum, eps, act, slope, backend,
                          k, dtype, segments)
    count = x.numel() // x.shape[1]
    kernel_running, kernel_momentum, rest = kernel_running_stats(running_mean, running_var, training, momentum, dtype)
    if backend == "cuda" and use_batch_stats and rest[0] is None and _norm_act.cpp_autograd_fits(weight, bias):
        # the usual training layer: statistics (running stats updated in place) and the fused forward
        # in one call, its autograd C++ (csrc/norm_act_autograd.cpp)
        return k.norm_act_stats(x, weight, bias, *kernel_running, kernel_momentum, float(eps), x.shape[1], False,
                                act, slope)
    w, b = detached_param(weight, dtype), detached_param(bias, dtype)
    # invstd, the affine tables and the running-stat update: six eager launches, done by the statistics'
    # own merge kernel (batch statistics) or one more (running statistics)
    if use_batch_stats:
        # detached: the Functions differentiate through the statistics themselves; a graph here only costs
        mean, var, invstd, scale, shift = k.channel_stats_affine(x.detach(), w, b, *kernel_running,
                                                                 kernel_momentum, float(eps))
    else:
        mean, var = detached_param(running_mean, dtype), detached_param(running_var, dtype)  # (dense)
        invstd, scale, shift = k.stats_affine(mean, var, w, b, None, None, count, 0.0, float(eps))
    if rest[0] is not None:
        update_running_stats(rest[0], rest[1], mean, var, count, momentum)
    grouping = Grouping(per_sample=False, groups=x.shape[1], batch_stats=use_batch_stats)
    return norm_act(x, weight, bias, mean, invstd, grouping, act, slope, backend, scale, shift)


def _segmented(x, running_mean, running_var, weight, bias, training, momentum, eps, act, slope, backend, k, dtype,
               segments):
    """Batch statistics per segment: (segments, C) tables of the segments' statistics (one reduction),
    their affine tables with the running stats updated once per segment in order (one launch), and the
    family's fused passes, which read each element's segment row."""
    channels = x.shape[1]
    count = x.numel() // (channels * segments)
    kernel_running, kernel_momentum, rest = kernel_running_stats(running_mean, running_var, training, momentum, dtype)
    if backend == "cuda" and rest[0] is None and _norm_act.cpp_autograd_fits(weight, bias):
        # the statistics, their tables and the fused forward in one call, its autograd C++, as the plain
        # layer's (csrc/norm_act_autograd.cpp)
        return k.norm_act_stats(x, weight, bias, *kernel_running, kernel_momentum, float(eps), channels, False,
                                act, slope, 1, segments)
    mean, var = k.segment_stats(x.detach(), segments)
    w, b = detached_param(weight, dtype), detached_param(bias, dtype)
    invstd, scale, shift = k.stats_affine(mean, var, w, b, *kernel_running, count, kernel_momentum, float(eps))
    if rest[0] is not None:  # (running stats the kernel cannot update in place, e.g. float16 buffers)
        for part in range(segments):
            update_running_stats(rest[0], rest[1], mean[part], var[part], count, momentum)
    grouping = Grouping(per_sample=True, groups=channels, batch_stats=True, segments=segments)
    return norm_act(x, weight, bias, mean, invstd, grouping, act, slope, backend, scale, shift)
