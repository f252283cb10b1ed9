"""Reference batch norm + activation: ``F.batch_norm`` then the activation,
written out so that every step is plain differentiable PyTorch."""
from __future__ import annotations

from typing import Optional

import torch

from .._activation import apply_activation


def channel_view_shape(x: torch.Tensor) -> list[int]:
    """Shape that broadcasts a (C,) vector over x of shape (N, C, *spatial)."""
    return [1, x.shape[1]] + [1] * (x.dim() - 2)


@torch.no_grad()
def update_running_stats(running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
                         mean: torch.Tensor, var: torch.Tensor, count: int, momentum: float) -> None:
    """Exponential running averages as ``nn.BatchNorm`` keeps them (unbiased var)."""
    targets, values = [], []
    if running_mean is not None:
        targets.append(running_mean)
        values.append(mean.to(running_mean.dtype))
    if running_var is not None:
        targets.append(running_var)
        values.append((var * (count / (count - 1))).to(running_var.dtype))
    if targets:
        # r + momentum * (v - r): one multi-tensor launch on CUDA for both buffers instead of four
        # elementwise ones (this runs in every fused layer's forward, where launches dominate).
        torch._foreach_lerp_(targets, values, momentum)


@torch.no_grad()
def stats_affine(mean: torch.Tensor, var: torch.Tensor, weight: Optional[torch.Tensor],
                 bias: Optional[torch.Tensor], running_mean: Optional[torch.Tensor],
                 running_var: Optional[torch.Tensor], count: int, momentum: float,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(invstd, scale, shift) with ``z = x * scale + shift`` the normalised, affine-transformed x, from
    the per-channel statistics (biased ``var``), (C,) vectors or (T, C) tables of T segments' statistics
    (outputs like them); the running stats, when given, are updated as ``update_running_stats`` does,
    once per table row in order.  The reference of the ``stats_affine`` kernels, which do all of
    this in one launch."""
    for row_mean, row_var in zip(*((mean, var) if mean.dim() == 2 else ([mean], [var]))):
        update_running_stats(running_mean, running_var, row_mean, row_var, count, momentum)
    invstd = torch.rsqrt(var + eps)
    scale = invstd if weight is None else weight * invstd
    shift = -(mean * scale) if bias is None else bias - mean * scale
    return invstd, scale, shift


@torch.no_grad()
def channel_stats_affine(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                         running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
                         momentum: float, eps: float):
    """(mean, var, invstd, scale, shift): x's per-channel statistics over (N, *spatial) (biased var,
    float32 or float64 for float64 x), then ``stats_affine`` of them.  The reference of the
    ``channel_stats_affine`` kernels, which compute the statistics and, in their merge step, the rest."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    dims = [0] + list(range(2, x.dim()))
    xc = x.to(dtype)
    mean, var = xc.mean(dim=dims), xc.var(dim=dims, unbiased=False)
    count = x.numel() // max(x.shape[1], 1)
    return (mean, var, *stats_affine(mean, var, weight, bias, running_mean, running_var, count, momentum, eps))


def batch_norm_act(x: torch.Tensor, running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
                   weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], training: bool,
                   momentum: float, eps: float, activation: str = "leaky_relu",
                   negative_slope: float = 0.2, segments: int = 1) -> torch.Tensor:
    """Batch statistics when ``training`` (or when there are no running stats),
    running statistics otherwise; statistics in float32 (float64 for float64 x).
    ``segments`` > 1 with batch statistics: the layer on each of that many equal
    parts of the batch alone, in order (running stats updated once per part)."""
    if segments > 1 and x.numel() and (training or running_mean is None or running_var is None):
        parts = [batch_norm_act(part, running_mean, running_var, weight, bias, training, momentum, eps, activation,
                                negative_slope) for part in x.chunk(segments)]
        return torch.cat(parts)
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = x.to(compute_dtype)
    shape = channel_view_shape(x)
    reduce_dims = [0] + list(range(2, x.dim()))
    use_batch_stats = training or running_mean is None or running_var is None
    if x.numel() == 0:  # as F.batch_norm: an empty output, running stats untouched
        return x * 1
    if use_batch_stats:
        mean = xc.mean(dim=reduce_dims)
        var = xc.var(dim=reduce_dims, unbiased=False)
        if training:
            count = x.numel() // x.shape[1]
            update_running_stats(running_mean, running_var, mean.detach(), var.detach(), count, momentum)
    else:
        mean = running_mean.to(compute_dtype)
        var = running_var.to(compute_dtype)
    y = (xc - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps)
    if weight is not None:
        y = y * weight.to(compute_dtype).view(shape)
    if bias is not None:
        y = y + bias.to(compute_dtype).view(shape)
    return apply_activation(y, activation, negative_slope).to(x.dtype)
