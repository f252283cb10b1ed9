"""Differentiable first and second moments, (mean, mean of squares), on the norm kernels.

Per channel over (N, *spatial) (``per_sample=False``, the statistics of a
reference batch) or per (n, c) over *spatial (``per_sample=True``).  Forward
is the norm family's Welford reduction; the backward
``dx = g_mean / K + 2 x g_sq / K`` (K elements per statistic) and its own
derivative are the family's elementwise and reduction kernels with mean 0 and
invstd 1, so ``xhat`` is x itself.
"""
from __future__ import annotations

import functools

import torch

from .. import _backend
from ._autograd import last_derivative
from ._layout import like

_IDENTITY = (0, 1.0)  # activation code and slope: the mask s is 1 everywhere


def _count(x: torch.Tensor, per_sample: bool) -> int:
    spatial = x.numel() // (x.shape[0] * x.shape[1])
    return spatial if per_sample else x.shape[0] * spatial


def _unit_tables(like_t: torch.Tensor):
    """mean 0 / invstd 1 (and scale 0 / shift 0) in the statistics' shape."""
    return torch.zeros_like(like_t), torch.ones_like(like_t)


class MomentsFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, per_sample, backend):
        k = _backend.kernels(backend, "batch_norm_act")
        if per_sample:
            mean, m2 = k.row_moments(x)
            sq_mean = torch.addcmul(m2 / _count(x, True), mean, mean)
        else:
            mean, var = k.channel_stats(x)
            sq_mean = torch.addcmul(var, mean, mean)
        ctx.save_for_backward(x)
        ctx.config = (per_sample, backend)
        return mean, sq_mean

    @staticmethod
    def backward(ctx, g_mean, g_sq):
        (x,) = ctx.saved_tensors
        # a plain backward calls the same code without the differentiable Function's host overhead
        if torch.is_grad_enabled():
            return MomentsBackwardFn.apply(g_mean, g_sq, x, *ctx.config), None, None
        return _backward(g_mean, g_sq, x, *ctx.config)[0], None, None


def _backward(g_mean, g_sq, x, per_sample, backend):
    """(dx, g_sq as the double backward reads it)."""
    k = _backend.kernels(backend, "batch_norm_act")
    cnt = _count(x, per_sample)
    stats_like = g_mean if g_mean is not None else g_sq
    zero, one = _unit_tables(stats_like)
    g_mean = zero if g_mean is None else g_mean
    g_sq = zero if g_sq is None else g_sq
    return k.norm_act_backward_apply(x, x, zero, zero, zero, one, zero, g_mean / cnt, 2 * g_sq / cnt,
                                     *_IDENTITY), g_sq


class MomentsBackwardFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g_mean, g_sq, x, per_sample, backend):
        dx, g_sq = _backward(g_mean, g_sq, x, per_sample, backend)
        ctx.save_for_backward(g_sq, x)
        ctx.config = (per_sample, backend)
        return dx

    @staticmethod
    def backward(ctx, u):
        g_sq, x = ctx.saved_tensors
        grad_g_mean, grad_g_sq, grad_x = last_derivative(functools.partial(_double, ctx.config), u, g_sq, x)
        return grad_g_mean, grad_g_sq, grad_x, None, None


def _double(config, u, g_sq, x):
    """dx = g_mean / K + 2 x g_sq / K is linear in g_mean, g_sq and x."""
    per_sample, backend = config
    k = _backend.kernels(backend, "batch_norm_act")
    cnt = _count(x, per_sample)
    u = like(u, x)
    zero, one = _unit_tables(g_sq)
    _, _, r_u, r_ux, _ = k.norm_act_double_reduce(u, x, x, zero, zero, zero, one, *_IDENTITY)
    grad_x = k.norm_act_backward_apply(u, x, zero, zero, zero, one, 2 * g_sq / cnt, zero, zero, *_IDENTITY)
    return r_u / cnt, 2 * r_ux / cnt, grad_x


def moments(x: torch.Tensor, per_sample: bool, backend: str):
    """(mean, mean of x^2), per channel or per (n, c); twice differentiable."""
    return MomentsFn.apply(x, per_sample, backend)
