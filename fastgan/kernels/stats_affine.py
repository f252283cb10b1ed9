"""Triton kernels of ``stats_affine`` and ``group_stats_affine``: statistics -> affine tables.

``stats_affine`` (batch norm): per-channel statistics -> (invstd, scale, shift),
running stats updated.

One program per block of channels does what eager PyTorch needs six small
launches for (see ``csrc/stats_affine.cu``, its CUDA twin, and
``fastgan.reference.batch_norm_act.stats_affine``, the reference)::

    invstd = 1 / sqrt(var + eps),  scale = w * invstd,  shift = b - mean * scale,
    running_mean += momentum * (mean - running_mean),
    running_var  += momentum * (var * count / (count - 1) - running_var).

``group_stats_affine`` (group / instance / layer norm): per-(n, c) moments ->
the group's (mean, invstd, scale, shift) as (N, C) tables, one program per
(sample, group) merging its channels (Chan, equal counts) -- about fourteen
small eager launches otherwise (``fastgan.reference.group_norm_act``).

Triton's float arguments are float32, so float64 statistics (whose eps and
momentum must stay exact) take the references instead.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..reference.batch_norm_act import stats_affine as reference_stats_affine
from ..reference.group_norm_act import group_stats_affine as reference_group_stats_affine
from ._sizes import cdiv, next_power_of_2

HAS_SQRT_RN = hasattr(tl, "sqrt_rn")  # correctly rounded sqrt where this Triton has it
_BLOCK = 256


@triton.jit
def inverse_sqrt(v, eps, SQRT_RN: tl.constexpr):
    """1 / sqrt(v + eps), each step correctly rounded where this Triton has sqrt_rn."""
    if SQRT_RN:
        return 1.0 / tl.sqrt_rn(v + eps)
    return 1.0 / tl.sqrt(v + eps)


@triton.jit
def _affine(r, mean, w_ptr, b_ptr, ch, mask, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """(scale, shift) = (w * r, b - mean * scale) for the channels ``ch`` (w = 1, b = 0 when absent)."""
    if HAS_WEIGHT:
        s = tl.load(w_ptr + ch, mask=mask, other=0.0) * r
    else:
        s = tl.zeros_like(mean) + r
    if HAS_BIAS:
        sh = tl.load(b_ptr + ch, mask=mask, other=0.0) - mean * s
    else:
        sh = -(mean * s)
    return s, sh


@triton.jit
def group_lanes(row, g, C, PER_GROUP, BLOCK: tl.constexpr):
    """The channels of group g in row ``row`` of a (T, C) table: (channel index, offset, mask)."""
    j = tl.arange(0, BLOCK)
    mask = j < PER_GROUP
    ch = g * PER_GROUP + j
    return ch, row.to(tl.int64) * C + ch, mask


@triton.jit
def write_affine(m, v, c, mask, w_ptr, b_ptr, rm_ptr, rv_ptr, invstd_ptr, scale_ptr, shift_ptr, eps, momentum,
                 unbias, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RUNNING: tl.constexpr,
                 SQRT_RN: tl.constexpr, e):
    """stats_affine for the channels ``c`` with mean m and biased variance v: invstd, scale, shift
    stored at table entries ``e`` (c for (C,) vectors), running stats updated.  Shared with
    channel_stats_affine's merge kernel."""
    r = inverse_sqrt(v, eps, SQRT_RN)
    s, sh = _affine(r, m, w_ptr, b_ptr, c, mask, HAS_WEIGHT, HAS_BIAS)
    tl.store(invstd_ptr + e, r, mask=mask)
    tl.store(scale_ptr + e, s, mask=mask)
    tl.store(shift_ptr + e, sh, mask=mask)
    if HAS_RUNNING:
        rm = tl.load(rm_ptr + c, mask=mask, other=0.0)
        rv = tl.load(rv_ptr + c, mask=mask, other=0.0)
        tl.store(rm_ptr + c, rm + momentum * (m - rm), mask=mask)
        tl.store(rv_ptr + c, rv + momentum * (v * unbias - rv), mask=mask)


@triton.jit
def _stats_affine_kernel(mean_ptr, var_ptr, w_ptr, b_ptr, rm_ptr, rv_ptr, invstd_ptr, scale_ptr, shift_ptr,
                         C, ROWS, eps, momentum, unbias, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                         HAS_RUNNING: tl.constexpr, SQRT_RN: tl.constexpr, BLOCK: tl.constexpr):
    """A block of channels; with (ROWS, C) statistics (segments of a batch) its rows in order, so the
    running stats are updated once per row as the layer run on each segment in turn would."""
    c = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = c < C
    for row in range(0, ROWS):
        e = row * C + c  # (ROWS * C < 2^31: the binding checks)
        m = tl.load(mean_ptr + e, mask=mask, other=0.0)
        v = tl.load(var_ptr + e, mask=mask, other=1.0)
        write_affine(m, v, c, mask, w_ptr, b_ptr, rm_ptr, rv_ptr, invstd_ptr, scale_ptr, shift_ptr, eps, momentum,
                     unbias, HAS_WEIGHT, HAS_BIAS, HAS_RUNNING, SQRT_RN, e)


def stats_affine(mean: torch.Tensor, var: torch.Tensor, weight: Optional[torch.Tensor],
                 bias: Optional[torch.Tensor], running_mean: Optional[torch.Tensor],
                 running_var: Optional[torch.Tensor], count: int, momentum: float, eps: float):
    """(invstd, scale, shift), each like ``mean``; same arguments as ``torch.ops.fastgan.stats_affine``.
    running_mean and running_var are given together (or neither) and updated in place."""
    if mean.dtype == torch.float64 or (running_mean is None) != (running_var is None):
        return reference_stats_affine(mean, var, weight, bias, running_mean, running_var, count, momentum, eps)
    if running_mean is not None and count < 2:
        raise ValueError(f"count must be > 1 to update running stats, got {count}")
    if mean.dim() not in (1, 2) or var.shape != mean.shape:
        raise ValueError(f"mean must be a (C,) vector or (T, C) table and var like it, got {tuple(mean.shape)} "
                         f"and {tuple(var.shape)}")
    invstd, scale, shift = torch.empty_like(mean), torch.empty_like(mean), torch.empty_like(mean)
    c = mean.shape[-1]
    rows = mean.shape[0] if mean.dim() == 2 else 1
    if c and rows:
        has_running = running_mean is not None
        _stats_affine_kernel[(cdiv(c, _BLOCK),)](
            mean, var, mean if weight is None else weight, mean if bias is None else bias,
            running_mean if has_running else mean, running_var if has_running else mean, invstd, scale, shift,
            c, rows, float(eps), float(momentum), count / (count - 1) if has_running else 1.0,
            HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, HAS_RUNNING=has_running,
            SQRT_RN=HAS_SQRT_RN, BLOCK=_BLOCK)
    return invstd, scale, shift


@triton.jit
def _group_stats_affine_kernel(rm_ptr, m2_ptr, w_ptr, b_ptr, mean_ptr, invstd_ptr, scale_ptr, shift_ptr,
                               C, PER_GROUP, spatial, eps, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                               SQRT_RN: tl.constexpr, BLOCK: tl.constexpr):
    ch, offs, mask = group_lanes(tl.program_id(0), tl.program_id(1), C, PER_GROUP, BLOCK)
    rm = tl.load(rm_ptr + offs, mask=mask, other=0.0)
    m2 = tl.load(m2_ptr + offs, mask=mask, other=0.0)
    # "* 1.0", not .to(): an integer argument equal to 1 arrives as a constant (Triton specializes it)
    count = PER_GROUP * 1.0
    positions = spatial * 1.0
    mean = tl.sum(rm, axis=0) / count
    d = tl.where(mask, rm - mean, 0.0)
    var = (tl.sum(m2, axis=0) + positions * tl.sum(d * d, axis=0)) / (positions * count)
    r = inverse_sqrt(var, eps, SQRT_RN)
    s, sh = _affine(r, tl.zeros_like(rm) + mean, w_ptr, b_ptr, ch, mask, HAS_WEIGHT, HAS_BIAS)
    tl.store(mean_ptr + offs, tl.zeros_like(rm) + mean, mask=mask)
    tl.store(invstd_ptr + offs, tl.zeros_like(rm) + r, mask=mask)
    tl.store(scale_ptr + offs, s, mask=mask)
    tl.store(shift_ptr + offs, sh, mask=mask)


def group_stats_affine(row_mean: torch.Tensor, row_m2: torch.Tensor, weight: Optional[torch.Tensor],
                       bias: Optional[torch.Tensor], groups: int, spatial: int, eps: float):
    """(mean, invstd, scale, shift) (N, C) tables; same arguments as ``torch.ops.fastgan.group_stats_affine``."""
    if row_mean.dtype == torch.float64:
        return reference_group_stats_affine(row_mean, row_m2, weight, bias, groups, spatial, eps)
    n, c = row_mean.shape
    out = [torch.empty_like(row_mean) for _ in range(4)]
    if row_mean.numel():
        per_group = c // groups
        _group_stats_affine_kernel[(n, groups)](
            row_mean, row_m2, row_mean if weight is None else weight, row_mean if bias is None else bias, *out,
            c, per_group, spatial, float(eps), HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
            SQRT_RN=HAS_SQRT_RN, BLOCK=next_power_of_2(per_group))
    return tuple(out)
