"""Triton kernels of ``virtual_stats_affine`` and its backward: virtual batch norm's statistics ->
the per-example affine tables, in one launch each way.

The twins of ``csrc/virtual_stats_affine.cu`` (same arguments and results as
``torch.ops.fastgan.virtual_stats_affine`` / ``virtual_stats_affine_backward``); the math is
``fastgan.reference.virtual_batch_norm.virtual_stats_affine``, a = ``mix``::

    mu = ref_mean + a (own_mean - ref_mean),  s = ref_sq + a (own_sq - ref_sq),
    r = 1 / sqrt(max(s - mu^2, 0) + eps),  scale = w r,  shift = b - mu scale.

Without own moments (the reference batch) mu = ref_mean, s = ref_sq and the tables are (C,).
Triton's float arguments are float32, so float64 tables take the references instead.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..reference.virtual_batch_norm import virtual_stats_affine as reference_virtual_stats_affine
from ..reference.virtual_batch_norm import virtual_stats_affine_backward as reference_virtual_stats_affine_backward
from ._sizes import cdiv, next_power_of_2
from .stats_affine import HAS_SQRT_RN, inverse_sqrt

_BLOCK = 256


@triton.jit
def _mixed(own_mean_ptr, own_sq_ptr, mr, sr, i, mask, mix, eps, HAS_OWN: tl.constexpr, SQRT_RN: tl.constexpr):
    """(mu, var before the clamp, r) of the elements i."""
    mu, s = mr, sr
    if HAS_OWN:
        mu = mr + mix * (tl.load(own_mean_ptr + i, mask=mask, other=0.0) - mr)
        s = sr + mix * (tl.load(own_sq_ptr + i, mask=mask, other=0.0) - sr)
    var = s - mu * mu
    # "var < 0 -> 0", not "var > 0 -> var": a NaN comes through, as the reference's clamp_min lets it
    return mu, var, inverse_sqrt(tl.where(var < 0.0, 0.0, var), eps, SQRT_RN)


@triton.jit
def _virtual_stats_affine_kernel(own_mean_ptr, own_sq_ptr, ref_mean_ptr, ref_sq_ptr, w_ptr, b_ptr, scale_ptr,
                                 shift_ptr, identity_ptr, total, C, mix, eps, HAS_OWN: tl.constexpr,
                                 HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, SQRT_RN: tl.constexpr,
                                 BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    c = i % C
    mr = tl.load(ref_mean_ptr + c, mask=mask, other=0.0)
    sr = tl.load(ref_sq_ptr + c, mask=mask, other=1.0)
    mu, var, r = _mixed(own_mean_ptr, own_sq_ptr, mr, sr, i, mask, mix, eps, HAS_OWN, SQRT_RN)
    sc = r
    if HAS_WEIGHT:
        sc = tl.load(w_ptr + c, mask=mask, other=0.0) * r
    sh = -(mu * sc)
    if HAS_BIAS:
        sh = tl.load(b_ptr + c, mask=mask, other=0.0) - mu * sc
    tl.store(scale_ptr + i, sc, mask=mask)
    tl.store(shift_ptr + i, sh, mask=mask)
    tl.store(identity_ptr + i, tl.zeros_like(sc), mask=mask)
    tl.store(identity_ptr + total + i, tl.zeros_like(sc) + 1.0, mask=mask)


@triton.jit
def _virtual_stats_affine_backward_kernel(g_scale_ptr, g_shift_ptr, own_mean_ptr, own_sq_ptr, ref_mean_ptr,
                                          ref_sq_ptr, w_ptr, g_own_ptr, g_channel_ptr, rows, C, mix, eps,
                                          HAS_OWN: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                                          SQRT_RN: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    # A block of channels walks the rows in tiles of ROWS (in order), summing each tile over its rows
    # (fixed order: bit-reproducible sums); the math is the CUDA twin's, commented there.
    c = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    cmask = c < C
    mr = tl.load(ref_mean_ptr + c, mask=cmask, other=0.0)[None, :]
    sr = tl.load(ref_sq_ptr + c, mask=cmask, other=1.0)[None, :]
    w = tl.zeros_like(mr) + 1.0
    if HAS_WEIGHT:
        w = tl.load(w_ptr + c, mask=cmask, other=0.0)[None, :]
    sum_mu = tl.zeros((BLOCK,), dtype=mr.dtype)
    sum_s = tl.zeros((BLOCK,), dtype=mr.dtype)
    sum_w = tl.zeros((BLOCK,), dtype=mr.dtype)
    sum_b = tl.zeros((BLOCK,), dtype=mr.dtype)
    # (int32 offsets: a table of 2^31 entries would be 8 GiB; and rows == 1 arrives as a constant)
    total = rows * C
    for n0 in range(0, rows, ROWS):
        n = n0 + tl.arange(0, ROWS)
        mask = (n < rows)[:, None] & cmask[None, :]
        i = n[:, None] * C + c[None, :]
        mu, var, r = _mixed(own_mean_ptr, own_sq_ptr, mr, sr, i, mask, mix, eps, HAS_OWN, SQRT_RN)
        gh = tl.load(g_shift_ptr + i, mask=mask, other=0.0)
        g = tl.load(g_scale_ptr + i, mask=mask, other=0.0) - mu * gh
        g_var = tl.where(var > 0.0, g * w * (-0.5 * r * r * r), 0.0)
        g_mu = -(w * r) * gh - 2.0 * mu * g_var
        if HAS_OWN:
            tl.store(g_own_ptr + i, mix * g_mu, mask=mask)
            tl.store(g_own_ptr + total + i, mix * g_var, mask=mask)
        # masked rows contribute zeros: gh, g are 0 there, so are g_var, g_mu and g * r
        sum_w += tl.sum(g * r, axis=0)
        sum_b += tl.sum(gh, axis=0)
        sum_mu += tl.sum(g_mu, axis=0)
        sum_s += tl.sum(g_var, axis=0)
    keep = 1.0 - mix
    tl.store(g_channel_ptr + c, keep * sum_mu, mask=cmask)
    tl.store(g_channel_ptr + C + c, keep * sum_s, mask=cmask)
    tl.store(g_channel_ptr + 2 * C + c, sum_w, mask=cmask)
    tl.store(g_channel_ptr + 3 * C + c, sum_b, mask=cmask)


def _check(op, own_mean, own_sq, ref_mean, channel_vectors, gradients=None):
    """The CUDA binding's checks (csrc/virtual_stats_affine.cpp), with its messages: ``channel_vectors``
    {name: tensor or None} like ref_mean, own_sq like own_mean, ``gradients`` {name: tensor} shaped like
    the tables (made contiguous by the caller), every other table contiguous."""
    if (own_mean is None) != (own_sq is None):
        raise ValueError(f"{op}: own_mean and own_sq are given together or not at all")
    table, table_name = (ref_mean, "ref_mean") if own_mean is None else (own_mean, "own_mean")
    checks = [(name, t, ref_mean, "ref_mean", True) for name, t in channel_vectors.items()]
    checks += [] if own_sq is None else [("own_sq", own_sq, own_mean, "own_mean", True)]
    checks += [(name, t, table, table_name, False) for name, t in (gradients or {}).items()]
    for name, t, like, like_name, dense in checks:
        if t is None:
            continue
        if t.dtype != like.dtype:
            raise TypeError(f"{op}: {name} must have {like_name}'s dtype {like.dtype}, got {t.dtype}")
        if t.shape != like.shape or t.device != like.device:
            raise ValueError(f"{op}: {name} must have {like_name}'s shape {tuple(like.shape)} on {like.device}, "
                             f"got {tuple(t.shape)} on {t.device}")
        if dense and not t.is_contiguous():
            raise ValueError(f"{op}: {name} must be contiguous")
    if not table.is_contiguous() or not ref_mean.is_contiguous():
        raise ValueError(f"{op}: ref_mean and own_mean must be contiguous")


def virtual_stats_affine(own_mean: Optional[torch.Tensor], own_sq: Optional[torch.Tensor], ref_mean: torch.Tensor,
                         ref_sq: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                         mix: float, eps: float):
    """(scale, shift, identity); same arguments as ``torch.ops.fastgan.virtual_stats_affine``."""
    _check("virtual_stats_affine", own_mean, own_sq, ref_mean, {"ref_sq": ref_sq, "weight": weight, "bias": bias})
    if ref_mean.dtype == torch.float64:
        return reference_virtual_stats_affine(own_mean, own_sq, ref_mean, ref_sq, weight, bias, mix, eps)
    like = ref_mean if own_mean is None else own_mean
    scale, shift = torch.empty_like(like), torch.empty_like(like)
    identity = like.new_empty((2,) + tuple(like.shape))
    total = like.numel()
    if total:
        own = own_mean is not None
        _virtual_stats_affine_kernel[(cdiv(total, _BLOCK),)](
            own_mean if own else ref_mean, own_sq if own else ref_mean, ref_mean, ref_sq,
            ref_mean if weight is None else weight, ref_mean if bias is None else bias, scale, shift, identity,
            total, ref_mean.shape[0], float(mix) if own else 0.0, float(eps), HAS_OWN=own,
            HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, SQRT_RN=HAS_SQRT_RN, BLOCK=_BLOCK)
    return scale, shift, identity


def virtual_stats_affine_backward(g_scale: torch.Tensor, g_shift: torch.Tensor, own_mean: Optional[torch.Tensor],
                                  own_sq: Optional[torch.Tensor], ref_mean: torch.Tensor, ref_sq: torch.Tensor,
                                  weight: Optional[torch.Tensor], mix: float, eps: float):
    """(g_own, g_channel); same arguments as ``torch.ops.fastgan.virtual_stats_affine_backward``."""
    _check("virtual_stats_affine_backward", own_mean, own_sq, ref_mean, {"ref_sq": ref_sq, "weight": weight},
           {"g_scale": g_scale, "g_shift": g_shift})
    if ref_mean.dtype == torch.float64:
        return reference_virtual_stats_affine_backward(g_scale, g_shift, own_mean, own_sq, ref_mean, ref_sq, weight,
                                                       mix, eps)
    own = own_mean is not None
    c = ref_mean.shape[0]
    rows = own_mean.shape[0] if own else 1
    g_own = ref_mean.new_empty((2, rows if own else 0, c))
    g_channel = ref_mean.new_empty((4, c))
    if c:
        # tiles of at most 16 rows x 64 channels: rows spread over a tile instead of walked one by one
        block, tile_rows = min(64, next_power_of_2(c)), min(16, next_power_of_2(rows))
        _virtual_stats_affine_backward_kernel[(cdiv(c, block),)](
            g_scale.contiguous(), g_shift.contiguous(), own_mean if own else ref_mean, own_sq if own else ref_mean,
            ref_mean, ref_sq, ref_mean if weight is None else weight, g_own, g_channel, rows, c,
            float(mix) if own else 0.0, float(eps), HAS_OWN=own, HAS_WEIGHT=weight is not None,
            SQRT_RN=HAS_SQRT_RN, ROWS=tile_rows, BLOCK=block)
    return g_own, g_channel
