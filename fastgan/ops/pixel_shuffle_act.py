"""Fused pixel shuffle (+ bias) (+ batch norm) + activation.

y = act(norm(pixel_shuffle(x, r)) (+ bias)) in one pass over x: the kernel
reads x in its own layout and writes y at the shuffled positions, so the
shuffle's copy, the norm's passes and the activation are one.  Batch
statistics of output channel c gather its r^2 input sub-channels over
(N, H, W): per-input-channel Welford statistics merged with Chan's formula.
The backward reads gy at the shuffled positions (the adjoint, a
pixel-unshuffle, fused with the norm backward).  Autograd is the norm
family's (``_norm_act.py``) with ``Grouping(upscale=r)``; parameters are
expanded to the r^2 sub-channels with ``repeat_interleave`` so autograd sums
their gradients back.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _backend, reference
from .._activation import activation_code
from .._validation import check_channel_vector, check_positive_float, check_tensor
from ..reference.batch_norm_act import update_running_stats
from ._layout import contiguous_canonical
from ._norm_act import Grouping, kernel_running_stats, norm_act

__all__ = ["pixel_shuffle_act", "pixel_shuffle_batch_norm_act"]


def _check(x, upscale_factor):
    check_tensor("x", x, min_dim=4, max_dim=4)
    if isinstance(upscale_factor, bool) or not isinstance(upscale_factor, int) or upscale_factor < 1:
        raise ValueError(f"upscale_factor must be a positive int, got {upscale_factor!r}")
    if x.shape[1] % (upscale_factor ** 2):
        raise ValueError(f"x has {x.shape[1]} channels, not divisible by upscale_factor^2 = {upscale_factor ** 2}")
    return x.shape[1] // upscale_factor ** 2


def _compute_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def pixel_shuffle_act(x: torch.Tensor, upscale_factor: int, bias: Optional[torch.Tensor] = None,
                      activation: str = "leaky_relu", negative_slope: float = 0.2, impl: str = "auto") -> torch.Tensor:
    """``act(nn.PixelShuffle(r)(x) + bias)`` fused; x (N, C r^2, H, W) -> (N, C, H r, W r)."""
    out_channels = _check(x, upscale_factor)
    check_channel_vector("bias", bias, out_channels, x.device)
    act, slope = activation_code(activation, negative_slope)
    backend = _backend.resolve(impl, x.device, "pixel_shuffle_act", cuda_support=True)
    if backend == "ref" or x.numel() == 0:
        return reference.pixel_shuffle_act(x, upscale_factor, bias, activation, negative_slope)
    r2 = upscale_factor ** 2
    x = contiguous_canonical(x)
    dtype = _compute_dtype(x)
    # The identity normalisation (mean 0, invstd 1) and its affine tables (scale 1, shift = bias),
    # handed to the Function so that it computes none: launches are what a host-bound step pays.
    zero = torch.zeros(x.shape[1], device=x.device, dtype=dtype)
    one = torch.ones_like(zero)
    shift = None if bias is None else bias.to(dtype).repeat_interleave(r2)
    grouping = Grouping(per_sample=False, groups=x.shape[1], batch_stats=False, upscale=upscale_factor)
    # views, not the same tensors twice: Dynamo refuses a tensor passed to two inputs of a Function
    return norm_act(x, None, shift, zero, one, grouping, act, slope, backend, one.view(-1),
                           zero.view(-1) if shift is None else shift.detach())


def pixel_shuffle_batch_norm_act(x: torch.Tensor, upscale_factor: int, running_mean: Optional[torch.Tensor] = None,
                                 running_var: Optional[torch.Tensor] = None, weight: Optional[torch.Tensor] = None,
                                 bias: Optional[torch.Tensor] = None, training: bool = True, momentum: float = 0.1,
                                 eps: float = 1e-5, activation: str = "leaky_relu", negative_slope: float = 0.2,
                                 impl: str = "auto") -> torch.Tensor:
    """``act(F.batch_norm(nn.PixelShuffle(r)(x), ...))`` fused, with BatchNorm's
    running-stat semantics; statistics per output channel over its r^2 input
    sub-channels x N x H x W."""
    out_channels = _check(x, upscale_factor)
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        check_channel_vector(name, t, out_channels, x.device)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (or both None)")
    if not training and running_mean is None:
        raise ValueError("running_mean and running_var are required when training=False")
    check_positive_float("eps", eps)
    if training and x.shape[0] * x.shape[2] * x.shape[3] * upscale_factor ** 2 == 1:
        raise ValueError(f"x must have more than 1 value per channel when training, got input size {tuple(x.shape)}")
    act, slope = activation_code(activation, negative_slope)
    backend = _backend.resolve(impl, x.device, "pixel_shuffle_batch_norm_act", cuda_support=True)
    if backend == "ref" or x.numel() == 0:
        return reference.pixel_shuffle_batch_norm_act(x, upscale_factor, running_mean, running_var, weight, bias,
                                                      training, momentum, eps, activation, negative_slope)
    r2 = upscale_factor ** 2
    x = contiguous_canonical(x)
    dtype = _compute_dtype(x)
    k = _backend.kernels(backend, "batch_norm_act")
    use_batch_stats = bool(training) or running_mean is None
    count = x.numel() // out_channels
    kernel_running, kernel_momentum, rest = kernel_running_stats(running_mean, running_var, training, momentum, dtype)
    if use_batch_stats:
        # An output channel's values are its r^2 input channels, which lie next to each other in a
        # contiguous x: seen as (N, C_out, r^2 H W), batch norm's statistics are plain per-channel
        # ones, one reduction (its merge kernel also gives invstd and updates the running stats).
        mean, var, invstd, _, _ = k.channel_stats_affine(x.detach().view(x.shape[0], out_channels, -1), None,
                                                         None, *kernel_running, kernel_momentum, float(eps))
    else:
        mean, var = running_mean.detach().to(dtype), running_var.detach().to(dtype)
        invstd, _, _ = k.stats_affine(mean, var, None, None, None, None, count, 0.0, float(eps))
    if rest[0] is not None:
        update_running_stats(rest[0], rest[1], mean, var, count, momentum)
    expand = lambda t: None if t is None else t.to(dtype).repeat_interleave(r2)  # noqa: E731
    grouping = Grouping(per_sample=False, groups=out_channels, batch_stats=use_batch_stats, upscale=upscale_factor)
    return norm_act(x, expand(weight), expand(bias), expand(mean), expand(invstd), grouping, act, slope,
                           backend)
