"""Triton kernel of ``norm_act_double_coefficients``: the norm family's double-backward
coefficients from the double-reduce sums, in one launch.

One program per (row t, group g) of the (T, C) tables (T = 1 for per-channel
vectors) loads the group's channels, takes the five group sums, then the two
that depend on the first ones, and writes a2, a3, b1, b2, b3, b4 and the
per-entry weight gradient (math: ``fastgan.reference.norm_act_double``, the
reference; ``csrc/double_coefficients.cu``, the CUDA twin).  Float64 takes the
reference (Triton's float arguments are float32).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..reference.norm_act_double import double_coefficients as reference_double_coefficients
from ._sizes import next_power_of_2
from .stats_affine import group_lanes


@triton.jit
def _double_coefficients_kernel(rg_ptr, rgx_ptr, ru_ptr, rux_ptr, rgu_ptr, w_ptr, r_ptr, alpha_ptr, beta_ptr,
                                a2_ptr, a3_ptr, b1_ptr, b2_ptr, b3_ptr, b4_ptr, gw_ptr, C, PER_GROUP, m,
                                HAS_WEIGHT: tl.constexpr, HAS_ALPHA: tl.constexpr, HAS_BETA: tl.constexpr,
                                BATCH_STATS: tl.constexpr, BLOCK: tl.constexpr):
    ch, offs, mask = group_lanes(tl.program_id(1), tl.program_id(0), C, PER_GROUP, BLOCK)
    r = tl.load(r_ptr + offs, mask=mask, other=0.0)
    r_gu = tl.load(rgu_ptr + offs, mask=mask, other=0.0)
    if HAS_WEIGHT:
        w = tl.load(w_ptr + ch, mask=mask, other=0.0)
    else:
        w = tl.where(mask, 1.0, 0.0).to(r.dtype)
    if HAS_ALPHA:
        alpha = tl.load(alpha_ptr + ch, mask=mask, other=0.0)
    else:
        alpha = tl.zeros_like(r)
    if HAS_BETA:
        beta = tl.load(beta_ptr + ch, mask=mask, other=0.0)
    else:
        beta = tl.zeros_like(r)
    if BATCH_STATS:
        r_g = tl.load(rg_ptr + offs, mask=mask, other=0.0)
        r_gx = tl.load(rgx_ptr + offs, mask=mask, other=0.0)
        r_u = tl.load(ru_ptr + offs, mask=mask, other=0.0)
        r_ux = tl.load(rux_ptr + offs, mask=mask, other=0.0)
        scale = w * r
        s_u = tl.sum(r_u, axis=0)
        s_ux = tl.sum(r_ux, axis=0)
        s_wg = tl.sum(w * r_g, axis=0)
        s_wgx = tl.sum(w * r_gx, axis=0)
        s_wgu = tl.sum(w * r_gu, axis=0)
        a2 = beta - scale * s_u / m
        c_g = alpha - scale * s_ux / m
        c_u = r * s_wgx / m
        big_g = tl.sum(tl.where(mask, c_g * r_g, 0.0), axis=0) - c_u * s_u
        big_gx = tl.sum(tl.where(mask, c_g * r_gx, 0.0), axis=0) - c_u * s_ux
        g_r = s_wgu - s_wg * s_u / m - s_wgx * s_ux / m
        tl.store(a2_ptr + offs, a2, mask=mask)
        tl.store(a3_ptr + offs, c_g, mask=mask)
        tl.store(b1_ptr + offs, r * c_g, mask=mask)
        tl.store(b2_ptr + offs, -r * c_u, mask=mask)
        tl.store(b3_ptr + offs, -r * big_g / m, mask=mask)
        tl.store(b4_ptr + offs, -(r * big_gx + r * r * g_r) / m, mask=mask)
        tl.store(gw_ptr + offs, r * (r_gu - s_u * r_g / m - s_ux * r_gx / m), mask=mask)
    else:
        zero = tl.zeros_like(r)
        tl.store(a2_ptr + offs, beta, mask=mask)
        tl.store(a3_ptr + offs, alpha, mask=mask)
        tl.store(b1_ptr + offs, alpha * r, mask=mask)
        tl.store(b2_ptr + offs, zero, mask=mask)
        tl.store(b3_ptr + offs, zero, mask=mask)
        tl.store(b4_ptr + offs, zero, mask=mask)
        tl.store(gw_ptr + offs, r * r_gu, mask=mask)


def norm_act_double_coefficients(r_g: torch.Tensor, r_gx: torch.Tensor, r_u: torch.Tensor, r_ux: torch.Tensor,
                                 r_gu: torch.Tensor, weight: Optional[torch.Tensor], invstd: torch.Tensor,
                                 alpha: Optional[torch.Tensor], beta: Optional[torch.Tensor], groups: int, m: int,
                                 batch_stats: bool):
    """(a2, a3, b1, b2, b3, b4, grad_w), each like invstd; same arguments as the CUDA op."""
    if invstd.dtype == torch.float64:
        return reference_double_coefficients(r_g, r_gx, r_u, r_ux, r_gu, weight, invstd, alpha, beta, groups, m,
                                             batch_stats)
    c = invstd.shape[-1]
    rows = invstd.numel() // c if c else 0
    out = invstd.new_empty((7, *invstd.shape)).unbind(0)  # one allocation, not seven
    if invstd.numel():
        per_group = c // groups
        _double_coefficients_kernel[(groups, rows)](
            r_g, r_gx, r_u, r_ux, r_gu, invstd if weight is None else weight, invstd,
            invstd if alpha is None else alpha, invstd if beta is None else beta, *out, c, per_group, float(m),
            HAS_WEIGHT=weight is not None, HAS_ALPHA=alpha is not None, HAS_BETA=beta is not None,
            BATCH_STATS=bool(batch_stats), BLOCK=next_power_of_2(per_group))
    return tuple(out)
