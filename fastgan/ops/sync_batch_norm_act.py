"""Synchronized batch norm + activation across a ``torch.distributed`` process group.

Forward: each rank's (count, mean, M2) per channel from the fused statistics
kernel (``channel_stats``), gathered from every rank and merged exactly
(Chan); the running statistics get the unbiased variance of all ranks'
elements, as ``nn.SyncBatchNorm``.  The normalize + affine + activation is
the family's fused forward kernel.

Backward: the two per-channel sums (sum gz, sum gz * xhat) from the fused
reduction are all-reduced, then the fused backward-apply kernel writes dx
with the global group size.  dx is the gradient of the sum of every rank's
loss; weight and bias get this rank's share (DDP then averages them), which
is ``nn.SyncBatchNorm``'s convention.

Double backward (gradient penalties): the family's double-backward algebra
with its per-channel sums all-reduced (one collective); a third derivative
raises, as everywhere in fastgan.  ``impl="ref"`` is built on
differentiable collectives and is differentiable to any order.  Every rank
must run each backward pass that reaches the op (they hold collectives).

Outside an initialised process group, or in a group of one, the op is plain
``batch_norm_act`` (``nn.SyncBatchNorm`` behaves the same way).
"""
from __future__ import annotations

from typing import Optional

import functools

import torch

from .. import _backend, reference
from .._activation import activation_code
from ..reference.sync_batch_norm_act import (gather_rows, merge_moments, update_running_stats_global)
from ._autograd import last_derivative
from ._layout import kernel_layout, like
from ._norm_act import affine_tables
from .batch_norm_act import batch_norm_act, check_arguments

__all__ = ["sync_batch_norm_act", "is_synchronized"]

def is_synchronized(process_group=None) -> bool:
    """Whether statistics would be reduced across processes: an initialised group of more than one rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    return dist.get_world_size(process_group) > 1


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _all_reduce_sum(t: torch.Tensor, group) -> torch.Tensor:
    import torch.distributed as dist

    t = t.contiguous()
    dist.all_reduce(t, group=group)
    return t


class SyncNormActFn(torch.autograd.Function):
    """(x, weight, bias) -> act(w * (x - mean) * invstd + b) with statistics of the whole group."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, invstd, total, act, slope, backend, group):
        scale, shift, _ = affine_tables(mean, invstd, weight, bias)
        if x.numel() == 0:
            y = torch.empty_like(x)
        else:
            k = _backend.kernels(backend, "batch_norm_act")
            y = k.norm_act_forward(x, scale, shift, act, slope)
        ctx.save_for_backward(x, weight, bias, mean, invstd, total)
        ctx.config = (act, slope, backend, group)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight, bias, mean, invstd, total = ctx.saved_tensors
        dx, dw, db = SyncNormActBackwardFn.apply(gy, x, weight, bias, mean, invstd, total, *ctx.config)
        need_w = weight is not None and ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        return (dx, dw.to(weight.dtype) if need_w else None, db.to(bias.dtype) if need_b else None,
                None, None, None, None, None, None, None)


class SyncNormActBackwardFn(torch.autograd.Function):
    """(gy, x, weight, bias) -> (dx, dw, db) with group-wide sums; differentiable once more."""

    @staticmethod
    def forward(ctx, gy, x, weight, bias, mean, invstd, total, act, slope, backend, group):
        # unused outputs (a gradient penalty differentiates dx only) reach backward as None, not as
        # zero tensors autograd would allocate and launch for
        ctx.set_materialize_grads(False)
        scale, shift, w = affine_tables(mean, invstd, weight, bias)
        empty = x.numel() == 0
        if empty:
            r_g = r_gx = torch.zeros_like(scale)
        else:
            k = _backend.kernels(backend, "batch_norm_act")
            gy = like(gy, x)
            r_g, r_gx = k.norm_act_backward_reduce(gy, x, scale, shift, mean, invstd, act, slope)
        sums = _all_reduce_sum(torch.stack([r_g, r_gx]), group)  # every rank joins, empty or not
        m = total.to(scale.dtype)
        k2 = -invstd * w * sums[0] / m
        k3 = -invstd * w * sums[1] / m
        dx = torch.empty_like(x) if empty else k.norm_act_backward_apply(gy, x, scale, shift, mean, invstd, scale,
                                                                          k2, k3, act, slope)
        ctx.save_for_backward(gy, x, weight, bias, mean, invstd, total)
        ctx.config = (act, slope, backend, group)
        return dx, r_gx, r_g

    @staticmethod
    def backward(ctx, u, alpha, beta):
        gy, x, weight, bias, mean, invstd, total = ctx.saved_tensors
        ggy, ggx, grad_w = last_derivative(functools.partial(_sync_double_backward, ctx.config), u, alpha, beta,
                                           gy, x, weight, bias, mean, invstd, total)
        grad_weight = grad_w.to(weight.dtype) if weight is not None and ctx.needs_input_grad[2] else None
        # bias only moves the activation's kink: its second derivative is zero almost everywhere.
        grad_bias = torch.zeros_like(bias) if bias is not None and ctx.needs_input_grad[3] else None
        return (ggy, ggx, grad_weight, grad_bias) + (None,) * 7


def _sync_double_backward(config, u, alpha, beta, gy, x, weight, bias, mean, invstd, total):
    """``_norm_act._double_backward`` for batch norm across ranks: u, alpha, beta = grads wrt dx, dw, db.

    The algebra (docs/norm_act_double_backward.md) needs sums over the whole
    batch: this rank's five kernel sums, and its sums of alpha * R (alpha
    may differ per rank: dw is this rank's share), are all-reduced in one
    collective; M is the global count.  grad wrt weight is this rank's share,
    as in the first backward."""
    act, slope, backend, group = config
    scale, shift, w = affine_tables(mean, invstd, weight, bias)
    r = invstd
    empty = x.numel() == 0
    u = torch.zeros_like(x) if u is None else like(u, x)
    alpha = torch.zeros_like(w) if alpha is None else alpha.to(r.dtype)
    beta = torch.zeros_like(w) if beta is None else beta.to(r.dtype)
    if empty:
        r_g = r_gx = r_u = r_ux = r_gu = torch.zeros_like(scale)
    else:
        k = _backend.kernels(backend, "batch_norm_act")
        r_g, r_gx, r_u, r_ux, r_gu = k.norm_act_double_reduce(u, gy, x, scale, shift, mean, invstd, act, slope)
    rows = torch.stack([r_g, r_gx, r_u, r_ux, r_gu, alpha * r_g, alpha * r_gx])
    s_g, s_gx, s_u, s_ux, s_gu, s_ag, s_agx = _all_reduce_sum(rows, group).unbind(0)
    m = total.to(scale.dtype)
    a2 = beta - scale * s_u / m
    c_g = alpha - scale * s_ux / m  # also the coefficient a3 of ggy
    c_u = r * w * s_gx / m
    sum_big_g = s_ag - scale * s_ux * s_g / m - c_u * s_u  # sum and xhat-moment of G = dL/dxhat, all ranks
    sum_big_gx = s_agx - scale * s_ux * s_gx / m - c_u * s_ux
    g_r = w * (s_gu - s_g * s_u / m - s_gx * s_ux / m)  # dL/dr
    grad_w = r * (r_gu - s_u * r_g / m - s_ux * r_gx / m)  # this rank's share
    coef = (scale, a2, c_g, r * c_g, -r * c_u, -r * sum_big_g / m, -(r * sum_big_gx + r * r * g_r) / m)
    if empty:
        return torch.empty_like(gy), torch.empty_like(x), grad_w
    ggx, ggy = k.norm_act_double_apply(u, gy, x, scale, shift, mean, invstd, *coef, act, slope)
    return ggy, ggx, grad_w


def sync_batch_norm_act(x: torch.Tensor, running_mean: Optional[torch.Tensor] = None,
                        running_var: Optional[torch.Tensor] = None, weight: Optional[torch.Tensor] = None,
                        bias: Optional[torch.Tensor] = None, training: bool = True, momentum: float = 0.1,
                        eps: float = 1e-5, activation: str = "leaky_relu", negative_slope: float = 0.2,
                        process_group=None, impl: str = "auto") -> torch.Tensor:
    """``batch_norm_act`` whose batch statistics cover every rank of ``process_group`` (default: the world).

    Ranks may hold different batch sizes, an empty batch included; each rank
    must call it (and backpropagate through it) in the same order.  With
    ``training=False`` (running statistics), outside an initialised process
    group or in a group of one rank it is ``batch_norm_act``.  Differentiable
    twice on the fused backends, to any order with ``impl="ref"``.
    """
    check_arguments(x, running_mean, running_var, weight, bias, training, momentum, eps, local_batch=False)
    use_batch_stats = bool(training) or running_mean is None
    if not use_batch_stats or not is_synchronized(process_group):
        return batch_norm_act(x, running_mean, running_var, weight, bias, training, momentum, eps, activation,
                              negative_slope, impl=impl)
    act, slope = activation_code(activation, negative_slope)
    backend = _backend.resolve(impl, x.device, "sync_batch_norm_act")
    momentum = momentum if training else 0.0
    if backend == "ref":
        return reference.sync_batch_norm_act(x, running_mean if training else None,
                                             running_var if training else None, weight, bias, momentum, eps,
                                             activation, negative_slope, process_group)
    x = kernel_layout(x)
    count = x.numel() // x.shape[1]
    if count:
        mean_l, var_l = _backend.kernels(backend, "batch_norm_act").channel_stats(x.detach())
    else:
        mean_l = var_l = torch.zeros(x.shape[1], device=x.device, dtype=_compute_dtype(x))
    row = torch.stack([torch.full_like(mean_l, float(count)), mean_l, var_l * count]).to(torch.float64)
    total, mean, m2 = merge_moments(gather_rows(row, process_group, differentiable=False))
    var = m2 / total.clamp_min(1)
    if training:
        update_running_stats_global(running_mean, running_var, mean, var, total, momentum)
    dtype = _compute_dtype(x)
    mean, invstd = mean.to(dtype), torch.rsqrt(var.to(dtype) + eps)
    return SyncNormActFn.apply(x, weight, bias, mean, invstd, total, act, slope, backend, process_group)
