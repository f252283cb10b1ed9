"""Memory layouts the fused kernels take.

Kernels view every big tensor of a call as (N, C, S) with one set of strides
(sN, sC, sS): contiguous NC* (sS = 1) or channels-last (sC = 1, sS = C).
Here an input is brought to one of those two layouts, and each companion
tensor (a gradient, say) to exactly the strides of x, so kernels need only
one stride triple.
"""
from __future__ import annotations

import torch


def kernel_layout(x: torch.Tensor) -> torch.Tensor:
    """x itself when a kernel can read it in place, else a contiguous copy."""
    if x.is_contiguous():
        return x
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return x
    return x.contiguous()


def like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` with exactly the strides of ``x`` (copied only when they differ)."""
    if t.stride() == x.stride():
        return t
    return torch.empty_like(x, dtype=t.dtype).copy_(t)


def strides_ncs(x: torch.Tensor) -> tuple[int, int, int, int, int, int]:
    """(N, C, S, sN, sC, sS) of x in one of the kernel layouts."""
    n, c = x.shape[0], x.shape[1]
    s = x.numel() // max(n * c, 1) if x.dim() > 2 else 1
    s_n, s_c = x.stride(0), x.stride(1)
    s_s = x.stride(-1) if x.dim() > 2 else 1
    return n, c, s, s_n, s_c, s_s
