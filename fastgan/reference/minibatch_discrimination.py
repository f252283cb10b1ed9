"""Reference minibatch discrimination (Salimans et al. 2016, section 3.2).

For M of shape (N, B, C) (N examples, B kernels, C dimensions per kernel)::

    o[i, b] = sum_j exp(-sum_c |M[i, b, c] - M[j, b, c]|)

with the j = i term (exactly exp(0) = 1) dropped when ``exclude_self``.
This is the ground truth: plain PyTorch, differentiable to any order, and it
builds the N x N x B x C difference tensor on purpose (that is what every
public implementation does).  The fused backends never build it.
"""
from __future__ import annotations

import torch

__all__ = ["minibatch_discrimination"]


def minibatch_discrimination(m: torch.Tensor, exclude_self: bool = False) -> torch.Tensor:
    """o (N, B) in m's dtype; computed in float32 (float64 for float64 m)."""
    compute_dtype = torch.float64 if m.dtype == torch.float64 else torch.float32
    mc = m.to(compute_dtype)
    dist = (mc.unsqueeze(1) - mc.unsqueeze(0)).abs().sum(dim=-1)  # (N, N, B): d[i, j, b]
    e = torch.exp(-dist)
    if exclude_self:
        n = m.shape[0]
        off_diagonal = ~torch.eye(n, dtype=torch.bool, device=m.device)
        e = e * off_diagonal.unsqueeze(-1).to(compute_dtype)
    return e.sum(dim=1).to(m.dtype)
