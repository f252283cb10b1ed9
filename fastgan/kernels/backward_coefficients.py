"""Triton kernel of ``norm_act_backward_coefficients``: the norm family's first-backward
coefficients and parameter gradients from the backward-reduce sums, in one launch.

Between the backward's reduction and its elementwise pass a fused norm layer
needs (math: ``fastgan.reference.norm_act_backward``, the reference;
``csrc/backward_coefficients.cu``, the CUDA twin)::

    k2 = -group_sum(scale * r_g) / count,   k3 = -group_sum(scale * r_gx) / count,
    sum_g = sum over rows of r_g,           sum_gx = sum over rows of r_gx.

One launch, two kinds of program: the first ones write k2 and k3 (a block of
entries each when every channel is its own group, else one (row, group) each),
the rest each sum a block of channels over the rows, in row order
(deterministic).  Float64 takes the reference (Triton's float arguments are
float32, and -1 / count must stay exact).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..reference.norm_act_backward import backward_coefficients as reference_backward_coefficients
from ._sizes import cdiv, next_power_of_2
from .stats_affine import group_lanes

_BLOCK = 256  # entries per program for per-channel groups, channels per column-sum program


@triton.jit
def _backward_coefficients_kernel(rg_ptr, rgx_ptr, scale_ptr, k2_ptr, k3_ptr, sum_g_ptr, sum_gx_ptr,
                                  ROWS, C, GROUPS, PER_GROUP, COEF_PROGRAMS, neg_inv_count,
                                  PER_CHANNEL: tl.constexpr, BLOCK: tl.constexpr, GROUP_BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    if pid < COEF_PROGRAMS:
        if PER_CHANNEL:  # each entry is its own group: a product per entry
            e = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
            mask = e < ROWS * C  # tables of N * C entries: int32 products
            coef = tl.load(scale_ptr + e, mask=mask, other=0.0) * neg_inv_count
            tl.store(k2_ptr + e, tl.load(rg_ptr + e, mask=mask, other=0.0) * coef, mask=mask)
            tl.store(k3_ptr + e, tl.load(rgx_ptr + e, mask=mask, other=0.0) * coef, mask=mask)
        else:
            _channels, offs, mask = group_lanes(pid // GROUPS, pid % GROUPS, C, PER_GROUP, GROUP_BLOCK)
            coef = tl.load(scale_ptr + offs, mask=mask, other=0.0) * neg_inv_count
            k2 = tl.sum(tl.load(rg_ptr + offs, mask=mask, other=0.0) * coef, axis=0)
            k3 = tl.sum(tl.load(rgx_ptr + offs, mask=mask, other=0.0) * coef, axis=0)
            tl.store(k2_ptr + offs, tl.zeros_like(coef) + k2, mask=mask)
            tl.store(k3_ptr + offs, tl.zeros_like(coef) + k3, mask=mask)
    else:
        c = (pid - COEF_PROGRAMS) * BLOCK + tl.arange(0, BLOCK)
        cmask = c < C
        acc_g = tl.zeros([BLOCK], sum_g_ptr.dtype.element_ty)
        acc_gx = tl.zeros([BLOCK], sum_g_ptr.dtype.element_ty)
        g_ptrs = rg_ptr + c
        gx_ptrs = rgx_ptr + c
        for _row in range(0, ROWS):  # row by row: pointers step by C (64-bit address arithmetic)
            acc_g += tl.load(g_ptrs, mask=cmask, other=0.0)
            acc_gx += tl.load(gx_ptrs, mask=cmask, other=0.0)
            g_ptrs += C
            gx_ptrs += C
        tl.store(sum_g_ptr + c, acc_g, mask=cmask)
        tl.store(sum_gx_ptr + c, acc_gx, mask=cmask)


def norm_act_backward_coefficients(r_g: torch.Tensor, r_gx: torch.Tensor, scale: torch.Tensor, groups: int,
                                   count: int):
    """(k2, k3, sum_g, sum_gx); same arguments as ``torch.ops.fastgan.norm_act_backward_coefficients``."""
    if scale.dtype == torch.float64:
        return reference_backward_coefficients(r_g, r_gx, scale, groups, count)
    c = scale.shape[-1]
    rows = scale.numel() // c if c else 0
    # two allocations, not four (each costs a fused layer's backward host time)
    k2, k3 = scale.new_empty((2, *scale.shape)).unbind(0)
    sum_g, sum_gx = (scale.new_empty if rows else scale.new_zeros)((2, c)).unbind(0)  # no rows: sums are 0
    if scale.numel():
        per_group = c // groups
        per_channel = per_group == 1
        coef_programs = cdiv(rows * c, _BLOCK) if per_channel else rows * groups
        grid = (coef_programs + cdiv(c, _BLOCK),)
        _backward_coefficients_kernel[grid](
            r_g, r_gx, scale, k2, k3, sum_g, sum_gx, rows, c, groups, per_group, coef_programs, -1.0 / count,
            PER_CHANNEL=per_channel, BLOCK=_BLOCK, GROUP_BLOCK=next_power_of_2(per_group))
    return k2, k3, sum_g, sum_gx
