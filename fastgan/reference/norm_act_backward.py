"""Reference of the norm family's first-backward coefficients (plain PyTorch).

The backward of a fused norm + activation layer (``fastgan/ops/_norm_act.py``)
is one reduction over the big tensors -- per entry (channel, or (n, c)) the
sums ``r_g = sum gz`` and ``r_gx = sum gz * xhat`` -- then one elementwise map
``dx = scale * gz + k2 + k3 * xhat`` with, per statistics group of ``count``
elements::

    k2 = -group_sum(scale * r_g) / count,   k3 = -group_sum(scale * r_gx) / count

and the parameter gradients ``db = sum_rows r_g``, ``dw = sum_rows r_gx``.
This computes those small tables; the ``norm_act_backward_coefficients``
kernels do the same in one launch (two to eight small eager launches here,
per layer and backward).
"""
from __future__ import annotations

import torch

from .norm_act_double import group_sum


@torch.no_grad()
def backward_coefficients(r_g: torch.Tensor, r_gx: torch.Tensor, scale: torch.Tensor, groups: int, count: int):
    """(k2, k3, sum_g, sum_gx) from the backward's per-entry sums.

    r_g, r_gx, scale: (C,) vectors or (N, C) tables alike; ``groups`` groups of
    C / groups consecutive channels share statistics of ``count`` elements.
    k2, k3 are like scale; sum_g, sum_gx are (C,): r_g, r_gx summed over the
    rows (the bias and weight gradients)."""
    c = scale.shape[-1]
    coef = scale * (-1.0 / count)  # rounded once, then one product per sum: the order the kernels use
    k2 = group_sum(r_g * coef, groups)
    k3 = group_sum(r_gx * coef, groups)
    return k2, k3, r_g.reshape(-1, c).sum(0), r_gx.reshape(-1, c).sum(0)
