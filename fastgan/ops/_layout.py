"""Memory layouts the fused kernels take.

Kernels view every big tensor of a call as (N, C, S) with one set of strides
(sN, sC, sS): contiguous NC* (sS = 1) or channels-last (sC = 1, sS = C).
Here an input is brought to one of those two layouts, and each companion
tensor (a gradient, say) to exactly the strides of x, so kernels need only
one stride triple.
"""
from __future__ import annotations

import torch


def _has_standard_strides(x: torch.Tensor, order: tuple) -> bool:
    """Whether x's strides are exactly those of a dense tensor laid out in the dim order ``order``
    (outermost first), size-1 dims included."""
    expected = 1
    shape, strides = x.shape, x.stride()
    for d in reversed(order):
        if strides[d] != expected:
            return False
        expected *= shape[d]
    return True


def _canonical_strides(x: torch.Tensor, order: tuple) -> torch.Tensor:
    """x (dense in the dim order ``order``) as a view with that order's standard strides.

    PyTorch calls a tensor contiguous whatever the strides of its size-1
    dims (``randn(2, 3, 1, 4).transpose(2, 3)`` is contiguous with
    stride(-1) = 4), but the Triton kernels address x through its strides:
    such a stride made them read outside x.  The view costs nothing and
    addresses the same elements."""
    if 1 not in x.shape or x.numel() == 0 or _has_standard_strides(x, order):
        # the usual case: no views (each would cost a dispatch and an autograd node); a dense tensor
        # without size-1 dims has exactly its order's standard strides
        return x
    permuted = x.permute(order)
    inverse = sorted(range(len(order)), key=order.__getitem__)
    return permuted.reshape(-1).view(permuted.shape).permute(inverse)


def contiguous_canonical(x: torch.Tensor) -> torch.Tensor:
    """x contiguous (copied only when it is not), with standard strides."""
    return _canonical_strides(x.contiguous(), tuple(range(x.dim())))


def kernel_layout(x: torch.Tensor) -> torch.Tensor:
    """x itself (a view with standard strides) when a kernel can read it in place,
    else a contiguous copy."""
    if x.is_contiguous():
        return _canonical_strides(x, tuple(range(x.dim())))
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return _canonical_strides(x, (0, 2, 3, 1))
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return _canonical_strides(x, (0, 2, 3, 4, 1))
    return contiguous_canonical(x)


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
