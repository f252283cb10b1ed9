"""Fused pixel shuffle (+ bias) (+ batch norm) + activation.

y = act(norm(pixel_shuffle(x, r)) (+ bias)) in one pass over x: the kernel
reads x in its own layout and writes y at the shuffled positions, so the
shuffle's copy, the norm's passes and the activation are one.  Batch
statistics of output channel c gather its r^2 input sub-channels over
(N, H, W): per-input-channel Welford statistics merged with Chan's formula.
The backward reads gy at the shuffled positions (the adjoint, a
pixel-unshuffle, fused with the norm backward).  Autograd is the norm
family's (``_norm_act.py``) with ``Grouping(upscale=r)``.  The tables
(statistics, weight, bias and their affine tables) are per output channel;
the kernels take them per input channel: the CUDA backend's op repeats them
itself below autograd (``csrc/norm_act_autograd.cpp``), the Python Functions
get them repeated with ``repeat_interleave``, whose autograd sums the
parameters' gradients back.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _backend, reference
from .._activation import activation_code
from .._validation import check_channel_vector, check_tensor, usual_norm_arguments
from ..reference.batch_norm_act import update_running_stats
from ._layout import contiguous_canonical
from .batch_norm_act import check_running_arguments, usual_running_arguments
from . import _norm_act
from ._norm_act import Grouping, NormActFn, as_dtype, detached_param, kernel_running_stats

__all__ = ["pixel_shuffle_act", "pixel_shuffle_batch_norm_act"]


def _check(x, upscale_factor):
    check_tensor("x", x, min_dim=4, max_dim=4)
    if isinstance(upscale_factor, bool) or not isinstance(upscale_factor, int) or upscale_factor < 1:
        raise ValueError(f"upscale_factor must be a positive int, got {upscale_factor!r}")
    if x.shape[1] % (upscale_factor ** 2):
        raise ValueError(f"x has {x.shape[1]} channels, not divisible by upscale_factor^2 = {upscale_factor ** 2}")
    return x.shape[1] // upscale_factor ** 2


def check_batch_norm_arguments(x, upscale_factor, running_mean, running_var, weight, bias, training, momentum,
                               eps) -> int:
    """pixel_shuffle_batch_norm_act's argument checks (batch_norm_act's, per output channel); the number of
    output channels."""
    r2 = upscale_factor * upscale_factor if type(upscale_factor) is int and upscale_factor >= 1 else 0
    if (r2 and isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] % r2 == 0
            and usual_norm_arguments(x, (running_mean, running_var, weight, bias), eps, channels=x.shape[1] // r2)
            and usual_running_arguments(running_mean, running_var, training, momentum)
            and not (training and x.shape[0] * x.shape[2] * x.shape[3] * r2 == 1)):
        return x.shape[1] // r2  # the usual valid call, in one pass; anything else meets the checks below
    out_channels = _check(x, upscale_factor)
    check_running_arguments(out_channels, x.device, running_mean, running_var, weight, bias, training, momentum, eps)
    if training and x.shape[0] * x.shape[2] * x.shape[3] * upscale_factor ** 2 == 1:
        raise ValueError(f"x must have more than 1 value per channel when training, got input size {tuple(x.shape)}")
    return out_channels


def _compute_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _shuffled_norm_act(x, weight, bias, mean, invstd, scale, shift, grouping: Grouping, act, slope, backend):
    """The fused forward from per-output-channel (C / r^2,) tables: on the CUDA backend one op call
    (it repeats the tables below autograd: no autograd nodes besides its own), else the Python
    Functions on the tables repeated to x's C channels."""
    if backend == "cuda" and _norm_act.cpp_autograd_fits(weight, bias):  # (the module's: one switch for tests)
        return _backend.kernels(backend, "batch_norm_act").norm_act(
            x, weight, bias, mean, invstd, scale, shift, grouping.groups, grouping.batch_stats, act, slope,
            grouping.upscale)
    r2, dtype = grouping.upscale ** 2, invstd.dtype
    # (parameters in the statistics' dtype first: their gradients are summed back in it, as the op does)
    per_input = lambda t: None if t is None else as_dtype(t, dtype).repeat_interleave(r2)  # noqa: E731
    return NormActFn.apply(x, per_input(weight), per_input(bias), per_input(mean), per_input(invstd), grouping, act,
                           slope, backend, per_input(scale), per_input(shift))


def pixel_shuffle_act(x: torch.Tensor, upscale_factor: int, bias: Optional[torch.Tensor] = None,
                      activation: str = "leaky_relu", negative_slope: float = 0.2, impl: str = "auto") -> torch.Tensor:
    """``act(nn.PixelShuffle(r)(x) + bias)`` fused; x (N, C r^2, H, W) -> (N, C, H r, W r)."""
    out_channels = _check(x, upscale_factor)
    check_channel_vector("bias", bias, out_channels, x.device)
    act, slope = activation_code(activation, negative_slope)
    backend = _backend.resolve(impl, x.device, "pixel_shuffle_act", cuda_support=True)
    if backend == "ref" or x.numel() == 0:
        return reference.pixel_shuffle_act(x, upscale_factor, bias, activation, negative_slope)
    x = contiguous_canonical(x)
    dtype = _compute_dtype(x)
    # The identity normalisation (mean 0, invstd 1) and its affine tables (scale 1, shift = bias),
    # made here so that the forward computes none: launches are what a host-bound step pays.
    zero = torch.zeros(out_channels, device=x.device, dtype=dtype)
    one = torch.ones_like(zero)
    grouping = Grouping(per_sample=False, groups=x.shape[1], batch_stats=False, upscale=upscale_factor)
    # views, not the same tensors twice: Dynamo refuses a tensor passed to two inputs of a Function
    shift = zero.view(-1) if bias is None else detached_param(bias, dtype)
    return _shuffled_norm_act(x, None, bias, zero, one, one.view(-1), shift, grouping, act, slope, backend)


def pixel_shuffle_batch_norm_act(x: torch.Tensor, upscale_factor: int, running_mean: Optional[torch.Tensor] = None,
                                 running_var: Optional[torch.Tensor] = None, weight: Optional[torch.Tensor] = None,
                                 bias: Optional[torch.Tensor] = None, training: bool = True, momentum: float = 0.1,
                                 eps: float = 1e-5, activation: str = "leaky_relu", negative_slope: float = 0.2,
                                 impl: str = "auto") -> torch.Tensor:
    """``act(F.batch_norm(nn.PixelShuffle(r)(x), ...))`` fused, with BatchNorm's
    running-stat semantics; statistics per output channel over its r^2 input
    sub-channels x N x H x W."""
    out_channels = check_batch_norm_arguments(x, upscale_factor, running_mean, running_var, weight, bias, training,
                                              momentum, eps)
    act, slope = activation_code(activation, negative_slope)
    backend = _backend.resolve(impl, x.device, "pixel_shuffle_batch_norm_act", cuda_support=True)
    if backend == "ref" or x.numel() == 0:
        return reference.pixel_shuffle_batch_norm_act(x, upscale_factor, running_mean, running_var, weight, bias,
                                                      training, momentum, eps, activation, negative_slope)
    x = contiguous_canonical(x)
    dtype = _compute_dtype(x)
    k = _backend.kernels(backend, "batch_norm_act")
    use_batch_stats = bool(training) or running_mean is None
    count = x.numel() // out_channels
    kernel_running, kernel_momentum, rest = kernel_running_stats(running_mean, running_var, training, momentum, dtype)
    if backend == "cuda" and use_batch_stats and rest[0] is None and _norm_act.cpp_autograd_fits(weight, bias):
        # the training layer: statistics (running stats updated in place) and the fused forward in one
        # call, as batch_norm_act's (csrc/norm_act_autograd.cpp)
        return k.norm_act_stats(x, weight, bias, *kernel_running, kernel_momentum, float(eps), out_channels, False,
                                act, slope, upscale_factor)
    w_c, b_c = detached_param(weight, dtype), detached_param(bias, dtype)
    if use_batch_stats:
        # An output channel's values are its r^2 input channels, which lie next to each other in a
        # contiguous x: seen as (N, C_out, r^2 H W), batch norm's statistics are plain per-channel
        # ones, one reduction (its merge kernel also gives invstd, the affine tables and updates the
        # running stats).
        mean, var, invstd, scale, shift = k.channel_stats_affine(
            x.detach().view(x.shape[0], out_channels, -1), w_c, b_c, *kernel_running, kernel_momentum, float(eps))
    else:
        mean, var = detached_param(running_mean, dtype), detached_param(running_var, dtype)  # (dense)
        invstd, scale, shift = k.stats_affine(mean, var, w_c, b_c, None, None, count, 0.0, float(eps))
    if rest[0] is not None:
        update_running_stats(rest[0], rest[1], mean, var, count, momentum)
    grouping = Grouping(per_sample=False, groups=out_channels, batch_stats=use_batch_stats, upscale=upscale_factor)
    return _shuffled_norm_act(x, weight, bias, mean, invstd, scale, shift, grouping, act, slope, backend)
