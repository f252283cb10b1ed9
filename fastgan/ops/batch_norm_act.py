"""Fused batch norm + activation: dispatch and autograd for the fast backends.

Math (per channel c, over the M = N * prod(spatial) elements of the channel)::

    xhat = (x - mean) * r,   r = 1 / sqrt(var + eps)
    z    = w * xhat + b = x * scale + shift,     y = act(z)
    s    = act'(z)  (1 or the negative slope: a mask recomputed from x)

Backward (given gy; gz = gy * s)::

    db = sum(gz)   dw = sum(gz * xhat)
    dx = w r (gz - db / M - xhat * dw / M)            (batch statistics)
    dx = w r gz                                       (running statistics)

The backward is itself an autograd Function whose backward is the double
backward (derived in ``docs/batch_norm_act.md``), so a gradient penalty can
differentiate through it.  Each pass is one kernel: a per-channel reduction
or an elementwise map ``out = k1 * a + k2 + k3 * xhat`` with per-channel
coefficients computed here from the reductions.  The kernels of the Triton
and CUDA backends have the same names and signatures (see
``fastgan/kernels/batch_norm_act.py``), so these Functions drive either.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from .. import _backend, reference
from .._activation import activation_code
from .._validation import check_channel_vector, check_positive_float, check_tensor
from ..reference.batch_norm_act import update_running_stats
from ._autograd import last_derivative
from ._layout import kernel_layout, like

__all__ = ["batch_norm_act"]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _affine(mean, invstd, weight, bias):
    """Per-channel (w*r, b - mean*w*r, w) in the compute dtype."""
    w = invstd.new_ones(invstd.shape) if weight is None else weight.to(invstd.dtype)
    scale = w * invstd
    shift = -mean * scale if bias is None else bias.to(invstd.dtype) - mean * scale
    return scale, shift, w


class _BatchNormActFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, use_batch_stats, update_stats,
                momentum, eps, act, slope, backend):
        k = _backend.kernels(backend, "batch_norm_act")
        x = kernel_layout(x)
        if use_batch_stats:
            mean, var = k.channel_stats(x)
            if update_stats:
                count = x.numel() // x.shape[1]
                update_running_stats(running_mean, running_var, mean, var, count, momentum)
        else:
            mean = running_mean.to(_compute_dtype(x))
            var = running_var.to(_compute_dtype(x))
        invstd = torch.rsqrt(var + eps)
        scale, shift, _ = _affine(mean, invstd, weight, bias)
        y = k.norm_act_forward(x, scale, shift, act, slope)
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.config = (use_batch_stats, act, slope, backend)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        dx, dw, db = _BatchNormActBackwardFn.apply(gy, x, weight, bias, mean, invstd, *ctx.config)
        need_w = weight is not None and ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        return (dx, dw.to(weight.dtype) if need_w else None, db.to(bias.dtype) if need_b else None,
                None, None, None, None, None, None, None, None, None)


class _BatchNormActBackwardFn(torch.autograd.Function):
    """(gy, x, weight, bias) -> (dx, dw, db); differentiable once more."""

    @staticmethod
    def forward(ctx, gy, x, weight, bias, mean, invstd, use_batch_stats, act, slope, backend):
        k = _backend.kernels(backend, "batch_norm_act")
        gy = like(gy, x)
        scale, shift, w = _affine(mean, invstd, weight, bias)
        sum_gz, sum_gz_xhat = k.norm_act_backward_reduce(gy, x, scale, shift, mean, invstd, act, slope)
        if use_batch_stats:
            count = x.numel() // x.shape[1]
            k1, k2, k3 = scale, -scale * sum_gz / count, -scale * sum_gz_xhat / count
        else:
            zero = torch.zeros_like(scale)
            k1, k2, k3 = scale, zero, zero
        dx = k.norm_act_backward_apply(gy, x, scale, shift, mean, invstd, k1, k2, k3, act, slope)
        ctx.save_for_backward(gy, x, weight, bias, mean, invstd)
        ctx.config = (use_batch_stats, act, slope, backend)
        return dx, sum_gz_xhat, sum_gz

    @staticmethod
    def backward(ctx, u, alpha, beta):
        gy, x, weight, bias, mean, invstd = ctx.saved_tensors
        ggy, ggx, grad_w = last_derivative(
            functools.partial(_double_backward, ctx.config), u, alpha, beta, gy, x, weight, bias, mean, invstd)
        grad_weight = grad_w.to(weight.dtype) if weight is not None and ctx.needs_input_grad[2] else None
        # bias only moves the activation's kink: its second derivative is zero almost everywhere.
        grad_bias = torch.zeros_like(bias) if bias is not None and ctx.needs_input_grad[3] else None
        return ggy, ggx, grad_weight, grad_bias, None, None, None, None, None, None


def _double_backward(config, u, alpha, beta, gy, x, weight, bias, mean, invstd):
    """Double backward: u = grad wrt dx, alpha = wrt dw, beta = wrt db.

    Returns (grad wrt gy, grad wrt x, grad wrt weight)."""
    use_batch_stats, act, slope, backend = config
    k = _backend.kernels(backend, "batch_norm_act")
    scale, shift, w = _affine(mean, invstd, weight, bias)
    r = invstd
    u = torch.zeros_like(x) if u is None else like(u, x)
    alpha = torch.zeros_like(r) if alpha is None else alpha.to(r.dtype)
    beta = torch.zeros_like(r) if beta is None else beta.to(r.dtype)
    s_g, s_gx, s_u, s_ux, s_gu = k.norm_act_double_reduce(u, gy, x, scale, shift, mean, invstd, act, slope)
    zero = torch.zeros_like(r)
    if use_batch_stats:
        m = x.numel() // x.shape[1]
        a1, a2, a3 = scale, beta - scale * s_u / m, alpha - scale * s_ux / m
        gz_dot_pu = s_gu - s_g * s_u / m - s_gx * s_ux / m  # <gz, P(u)>, P projects out 1 and xhat
        c_g, c_u = a3, scale * s_gx / m
        b1, b2 = r * c_g, -r * c_u
        b3 = (-c_g * s_g + c_u * s_u) * r / m
        b4 = (-c_g * s_gx + c_u * s_ux) * r / m - r * r * w * gz_dot_pu / m
        grad_w = r * gz_dot_pu
    else:
        a1, a2, a3 = scale, beta, alpha
        b1, b2, b3, b4 = alpha * r, zero, zero, zero
        grad_w = r * s_gu
    ggx, ggy = k.norm_act_double_apply(u, gy, x, scale, shift, mean, invstd,
                                        a1, a2, a3, b1, b2, b3, b4, act, slope)
    return ggy, ggx, grad_w


def _check(x, running_mean, running_var, weight, bias, training, momentum, eps):
    check_tensor("x", x, min_dim=2)
    channels = x.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        check_channel_vector(name, t, channels, x.device)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (or both None)")
    if not training and running_mean is None:
        raise ValueError("running_mean and running_var are required when training=False")
    check_positive_float("eps", eps)
    if training and running_mean is not None:
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
            raise TypeError(f"momentum must be a float, got {type(momentum).__name__}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    if training and x.numel() // max(channels, 1) == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")


def batch_norm_act(x: torch.Tensor, running_mean: Optional[torch.Tensor] = None,
                   running_var: Optional[torch.Tensor] = None, weight: Optional[torch.Tensor] = None,
                   bias: Optional[torch.Tensor] = None, training: bool = True, momentum: float = 0.1,
                   eps: float = 1e-5, activation: str = "leaky_relu", negative_slope: float = 0.2,
                   impl: str = "auto") -> torch.Tensor:
    """``act(F.batch_norm(x, ...))`` in one fused op, with the same semantics.

    x is (N, C) or (N, C, *spatial), float32 / float16 / bfloat16 (float64
    too), contiguous or channels-last.  With ``training=True`` batch
    statistics are used and, when given, ``running_mean`` / ``running_var``
    are updated in place (unbiased variance, factor ``momentum``).
    ``activation`` is ``"leaky_relu"`` (``negative_slope``), ``"relu"`` or
    ``"identity"``.  Differentiable twice (gradient penalties).
    """
    _check(x, running_mean, running_var, weight, bias, training, momentum, eps)
    act, slope = activation_code(activation, negative_slope)
    backend = _backend.resolve(impl, x.device, "batch_norm_act")
    if backend == "ref" or x.numel() == 0:
        return reference.batch_norm_act(x, running_mean, running_var, weight, bias, training,
                                        momentum, eps, activation, negative_slope)
    use_batch_stats = bool(training) or running_mean is None
    update_stats = bool(training) and running_mean is not None
    return _BatchNormActFn.apply(x, weight, bias, running_mean, running_var, use_batch_stats,
                                 update_stats, float(momentum) if update_stats else 0.0, float(eps),
                                 act, slope, backend)
