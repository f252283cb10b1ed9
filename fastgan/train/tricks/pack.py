"""PacGAN packing (Lin et al. 2018): D judges m samples at once.

``pack(x, m)`` turns (N, C, *rest) into (N / m, m * C, *rest): pack j is
samples j*m ... j*m + m - 1 concatenated along channels (features for the
MLP of toy data).  The discriminator is built with m times the input
channels; all samples of a pack are real or all are fake.
"""
from __future__ import annotations

import torch


def pack_size_ok(n: int, m: int) -> bool:
    return m >= 1 and n % m == 0


def pack(x: torch.Tensor, m: int) -> torch.Tensor:
    if m == 1:
        return x
    n = x.shape[0]
    if not pack_size_ok(n, m):
        raise ValueError(f"the batch size {n} must be a multiple of the pack size {m}")
    return x.reshape(n // m, m * x.shape[1], *x.shape[2:])
