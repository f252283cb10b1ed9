"""Reference of the norm family's double-backward coefficients (plain PyTorch).

The double backward of a fused norm + activation layer (``fastgan/ops/_norm_act.py``,
derived in ``docs/norm_act_double_backward.md``) is two passes over the big
tensors -- five sums, then one elementwise map -- with small per-channel (or
per-(n, c)) coefficients in between.  This computes those coefficients from the
sums; the ``norm_act_double_coefficients`` kernels do the same in one launch
(about fifty small eager launches here).
"""
from __future__ import annotations

from typing import Optional

import torch


def group_sum(t: torch.Tensor, groups: int) -> torch.Tensor:
    """Sums over each group of C / groups consecutive channels (last dim), expanded back to t's shape."""
    c = t.shape[-1]
    if c == groups:
        return t
    sums = t.reshape(*t.shape[:-1], groups, c // groups).sum(-1)
    return sums.repeat_interleave(c // groups, dim=-1)


@torch.no_grad()
def double_coefficients(r_g: torch.Tensor, r_gx: torch.Tensor, r_u: torch.Tensor, r_ux: torch.Tensor,
                        r_gu: torch.Tensor, weight: Optional[torch.Tensor], invstd: torch.Tensor,
                        alpha: Optional[torch.Tensor], beta: Optional[torch.Tensor], groups: int, m: int,
                        batch_stats: bool):
    """(a2, a3, b1, b2, b3, b4, grad_w) for ``norm_act_double_apply`` (a1 is the scale table).

    r_*: the double-reduce sums, per channel (C,) or per (n, c) (N, C); invstd like them; weight,
    alpha (grad wrt dw), beta (grad wrt db): (C,) or None (ones / zeros).  grad_w is per entry,
    like r_g (summed over samples by the caller).  ``m`` elements share one statistic."""
    r = invstd
    w = torch.ones_like(r) if weight is None else weight.to(r.dtype)
    alpha = torch.zeros_like(r) if alpha is None else alpha.to(r.dtype) + torch.zeros_like(r)
    beta = torch.zeros_like(r) if beta is None else beta.to(r.dtype) + torch.zeros_like(r)
    scale = w * r
    if not batch_stats:
        zero = torch.zeros_like(r)
        return beta, alpha, alpha * r, zero, zero, zero, r * r_gu
    gs = lambda t: group_sum(t, groups)  # noqa: E731
    s_u, s_ux = gs(r_u), gs(r_ux)
    s_wg, s_wgx, s_wgu = gs(w * r_g), gs(w * r_gx), gs(w * r_gu)
    a2 = beta - scale * s_u / m
    c_g = alpha - scale * s_ux / m  # also the coefficient a3 of ggy
    c_u = r * s_wgx / m
    sum_big_g = gs(c_g * r_g) - c_u * s_u  # sum and xhat-moment of G = dL/dxhat
    sum_big_gx = gs(c_g * r_gx) - c_u * s_ux
    g_r = s_wgu - s_wg * s_u / m - s_wgx * s_ux / m  # dL/dr
    grad_w = r * (r_gu - s_u * r_g / m - s_ux * r_gx / m)
    return a2, c_g, r * c_g, -r * c_u, -r * sum_big_g / m, -(r * sum_big_gx + r * r * g_r) / m, grad_w
