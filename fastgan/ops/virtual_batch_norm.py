"""Fused virtual batch normalization (formula in ``fastgan/reference/virtual_batch_norm.py``).

Three launches forward: the per-(n, c) spatial moments (or, for the reference
batch, the per-channel moments), ``virtual_stats_affine`` (the moments mixed
with the reference statistics into per-example affine tables, one launch where
PyTorch arithmetic takes about a dozen) and one fused normalise + affine +
activation pass.  The tables' Function has its own backward kernel (one launch
where autograd of the arithmetic takes about twenty); differentiated again (a
gradient penalty through the layer) its backward is the reference's
vector-Jacobian product in plain PyTorch.  The two big passes are the norm
family's twice-differentiable Functions (``_moments.py``, ``_norm_act.py``).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _backend, reference
from .._activation import activation_code
from .._validation import check_channel_vector, check_positive_float, check_tensor
from ..reference.virtual_batch_norm import virtual_stats_affine_vjp as reference_virtual_stats_affine_vjp
from ._layout import kernel_layout
from ._moments import moments
from ._norm_act import Grouping, as_dtype, norm_act

__all__ = ["virtual_batch_norm", "virtual_batch_reference_stats"]


def virtual_batch_reference_stats(x_ref: torch.Tensor, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(ref_mean, ref_sq_mean) of a reference batch: per-channel mean of x and of x^2
    over (N_ref, *spatial), float32; differentiable (gradients reach x_ref)."""
    check_tensor("x_ref", x_ref, min_dim=2)
    if x_ref.shape[0] * math.prod(x_ref.shape[2:]) == 0:
        # the mean over no elements is NaN: refuse rather than normalise everything with it
        raise ValueError(f"x_ref must hold at least one value per channel (a non-empty reference batch), "
                         f"got shape {tuple(x_ref.shape)}")
    backend = _backend.resolve(impl, x_ref.device, "virtual_batch_reference_stats")
    if backend == "ref" or x_ref.numel() == 0:
        return reference.virtual_batch_reference_stats(x_ref)
    return moments(kernel_layout(x_ref), False, backend)


def _check(x, ref_mean, ref_sq_mean, ref_count, weight, bias, eps):
    check_tensor("x", x, min_dim=2)
    c = x.shape[1]
    check_channel_vector("ref_mean", ref_mean, c, x.device)
    check_channel_vector("ref_sq_mean", ref_sq_mean, c, x.device)
    if ref_mean is None or ref_sq_mean is None:
        raise ValueError("ref_mean and ref_sq_mean are required (run a reference batch first)")
    if isinstance(ref_count, bool) or not isinstance(ref_count, int) or ref_count < 1:
        raise ValueError(f"ref_count must be the reference batch size, a positive int; got {ref_count!r}")
    check_channel_vector("weight", weight, c, x.device)
    check_channel_vector("bias", bias, c, x.device)
    check_positive_float("eps", eps)


def _savable(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy where ``t`` was made under ``torch.inference_mode`` (statistics of a reference pass run
    there) and this call is not: the Functions save these vectors for backward, which an inference tensor
    refuses, while the reference's arithmetic on them saves nothing and runs."""
    if torch.compiler.is_compiling():  # (Dynamo cannot trace is_inference(); a compiled graph takes no such tensor)
        return t
    return t.clone() if t.is_inference() and not torch.is_inference_mode_enabled() else t


def virtual_batch_norm(x: torch.Tensor, ref_mean: torch.Tensor, ref_sq_mean: torch.Tensor, ref_count: int,
                       weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                       eps: float = 1e-5, activation: str = "identity", negative_slope: float = 0.2,
                       impl: str = "auto", reference_batch: bool = False) -> torch.Tensor:
    """Virtual batch norm of live examples x against reference statistics.

    Each example i is normalised with ``mu_i = a*mean_spatial(x_i) + (1-a)*ref_mean`` and
    ``s_i = a*mean_spatial(x_i^2) + (1-a)*ref_sq_mean``, ``a = 1/(ref_count+1)``:
    ``y = act((x - mu_i) / sqrt(eps + s_i - mu_i^2) * weight + bias)``.  With
    ``reference_batch=True`` x is the reference batch and is normalised with
    the reference statistics alone.  Twice differentiable in x, ref_mean,
    ref_sq_mean, weight and bias.
    """
    _check(x, ref_mean, ref_sq_mean, ref_count, weight, bias, eps)
    act, slope = activation_code(activation, negative_slope)
    backend = _backend.resolve(impl, x.device, "virtual_batch_norm")
    if backend == "ref" or x.numel() == 0:
        return reference.virtual_batch_norm(x, ref_mean, ref_sq_mean, ref_count, weight, bias, eps,
                                            activation, negative_slope, reference_batch)
    x = kernel_layout(x)
    stats_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    # the table kernels read contiguous vectors (a strided view, e.g. a slice of a bigger buffer, is copied)
    mu_r, s_r, w, b = (None if t is None else _savable(as_dtype(t, stats_dtype).contiguous())
                       for t in (ref_mean, ref_sq_mean, weight, bias))
    own_mean = own_sq = None
    if not reference_batch:
        own_mean, own_sq = moments(x, True, backend)  # (N, C)
    scale, shift, identity = VirtualStatsAffineFn.apply(own_mean, own_sq, mu_r, s_r, w, b, 1.0 / (ref_count + 1),
                                                        float(eps), backend)
    # act(x * scale + shift) with differentiable (C,) or (N, C) affine tables: normalisation by mean 0
    # and invstd 1 (identity, from the same launch), the tables as weight and bias, and as the affine
    # tables themselves (detached aliases, so that the Function computes none and Dynamo sees no
    # tensor passed twice).
    grouping = Grouping(per_sample=not reference_batch, groups=x.shape[1], batch_stats=False)
    return norm_act(x, scale, shift, identity[0], identity[1], grouping, act, slope, backend, scale.detach(),
                    shift.detach())


class VirtualStatsAffineFn(torch.autograd.Function):
    """(scale, shift, identity) = virtual_stats_affine(own_mean, own_sq, ref_mean, ref_sq, weight, bias, mix,
    eps) (``fastgan.reference.virtual_batch_norm``), one kernel each way; own_mean / own_sq, weight, bias
    may be None.  identity is not differentiable."""

    @staticmethod
    def forward(ctx, own_mean, own_sq, ref_mean, ref_sq, weight, bias, mix, eps, backend):
        k = _backend.kernels(backend, "virtual_stats_affine")
        scale, shift, identity = k.virtual_stats_affine(own_mean, own_sq, ref_mean, ref_sq, weight, bias, mix, eps)
        ctx.mark_non_differentiable(identity)
        ctx.save_for_backward(own_mean, own_sq, ref_mean, ref_sq, weight)  # (the gradients need no bias)
        ctx.mix, ctx.eps, ctx.backend = mix, eps, backend
        return scale, shift, identity

    @staticmethod
    def backward(ctx, g_scale, g_shift, _g_identity):
        saved = ctx.saved_tensors
        wanted = ctx.needs_input_grad[:6]
        if torch.is_grad_enabled():
            # create_graph (a penalty differentiates this backward): the reference's vector-Jacobian
            # product, plain PyTorch on the saved inputs, differentiable again
            grads = reference_virtual_stats_affine_vjp(g_scale, g_shift, *saved, ctx.mix, ctx.eps)
            return (*(g if want else None for g, want in zip(grads, wanted)), None, None, None)
        own_mean, own_sq, ref_mean, ref_sq, weight = saved
        k = _backend.kernels(ctx.backend, "virtual_stats_affine")
        g_own, g_channel = k.virtual_stats_affine_backward(g_scale, g_shift, own_mean, own_sq, ref_mean, ref_sq,
                                                           weight, ctx.mix, ctx.eps)
        grads = ((g_own[0], g_own[1]) if own_mean is not None else (None, None)) + tuple(g_channel.unbind(0))
        return (*(g if want else None for g, want in zip(grads, wanted)), None, None, None)
