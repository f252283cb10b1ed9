"""Reference group / instance / layer norm + activation (plain PyTorch).

All three normalise each sample over a group of channels and the spatial
positions, then apply a per-channel affine and the activation:
GroupNorm(G, C) groups C/G channels; InstanceNorm is G = C; the layer norm
of a WGAN-GP critic (``LayerNormAct2d``) is G = 1, i.e. ``GroupNorm(1, C)``:
statistics over (C, H, W) of each sample, affine per channel.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .._activation import apply_activation
from .batch_norm_act import batch_norm_act, channel_view_shape, update_running_stats


@torch.no_grad()
def group_stats_affine(row_mean: torch.Tensor, row_m2: torch.Tensor, weight: Optional[torch.Tensor],
                       bias: Optional[torch.Tensor], groups: int, spatial: int, eps: float):
    """Per-sample group statistics as (N, C) tables: (mean, invstd, scale, shift), from the
    per-(n, c) mean and M2 over ``spatial`` positions (Chan's merge, equal counts), with
    ``z = x * scale + shift`` the normalised, affine-transformed x.  The reference of the
    ``group_stats_affine`` kernels, which do this in one launch."""
    n, c = row_mean.shape
    per_group = c // groups
    rm = row_mean.reshape(n, groups, per_group)
    mean = rm.mean(-1, keepdim=True)
    m2 = row_m2.reshape(n, groups, per_group).sum(-1, keepdim=True) + spatial * ((rm - mean) ** 2).sum(-1, keepdim=True)
    invstd = torch.rsqrt(m2 / (spatial * per_group) + eps)
    # dense tables, as the kernels write them (the Triton backend's float64 path hands these to kernels
    # that read (N, C) tables densely; with one group a reshape of the expansion would be a stride-0 view)
    mean_t = mean.expand(n, groups, per_group).reshape(n, c).contiguous()
    invstd_t = invstd.expand(n, groups, per_group).reshape(n, c).contiguous()
    scale = invstd_t if weight is None else invstd_t * weight
    shift = -(mean_t * scale) if bias is None else bias - mean_t * scale
    return mean_t, invstd_t, scale, shift


@torch.no_grad()
def row_stats_affine(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], groups: int,
                     eps: float):
    """``group_stats_affine`` of x's per-(n, c) mean and M2 over its spatial positions (float32, float64
    for float64 x): the reference of the ``row_stats_affine`` kernels, which do both in one call."""
    n, c = x.shape[0], x.shape[1]
    xs = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32).reshape(n, c, -1)
    row_mean = xs.mean(-1)
    row_m2 = ((xs - row_mean[..., None]) ** 2).sum(-1)
    return group_stats_affine(row_mean, row_m2, weight, bias, groups, xs.shape[-1], eps)


def group_norm_act(x: torch.Tensor, num_groups: int, weight: Optional[torch.Tensor] = None,
                   bias: Optional[torch.Tensor] = None, eps: float = 1e-5, activation: str = "leaky_relu",
                   negative_slope: float = 0.2) -> torch.Tensor:
    """``act(F.group_norm(x, num_groups, weight, bias, eps))``, statistics in float32 (float64)."""
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    n = x.shape[0]
    # the group size spelled out: reshape(n, G, -1) is ambiguous (an error) for an empty batch
    group_size = (x.shape[1] // num_groups) * math.prod(x.shape[2:])
    xg = x.to(compute_dtype).reshape(n, num_groups, group_size)
    mean = xg.mean(dim=-1, keepdim=True)
    # (var() of an empty batch warns about degrees of freedom; there is nothing to normalise)
    var = xg.var(dim=-1, unbiased=False, keepdim=True) if xg.numel() else torch.zeros_like(mean)
    # Normalise x itself through per-(n, c) views of the group statistics, not the (n, G, -1)
    # reshape: elementwise ops keep x's memory format (a channels-last x stays channels-last, as
    # with nn.GroupNorm), where the reshape would copy it to NCHW.
    per_channel = (n, num_groups, x.shape[1] // num_groups)
    shape = channel_view_shape(x)
    mean_c = mean.expand(per_channel).reshape(n, x.shape[1]).view(n, *shape[1:])
    invstd_c = torch.rsqrt(var + eps).expand(per_channel).reshape(n, x.shape[1]).view(n, *shape[1:])
    y = (x.to(compute_dtype) - mean_c) * invstd_c
    if weight is not None:
        y = y * weight.to(compute_dtype).view(shape)
    if bias is not None:
        y = y + bias.to(compute_dtype).view(shape)
    return apply_activation(y, activation, negative_slope).to(x.dtype)


def instance_norm_act(x: torch.Tensor, running_mean: Optional[torch.Tensor] = None,
                      running_var: Optional[torch.Tensor] = None, weight: Optional[torch.Tensor] = None,
                      bias: Optional[torch.Tensor] = None, use_input_stats: bool = True, momentum: float = 0.1,
                      eps: float = 1e-5, activation: str = "leaky_relu", negative_slope: float = 0.2) -> torch.Tensor:
    """``act(F.instance_norm(...))``: per-sample, per-channel statistics; running
    stats (when given and ``use_input_stats``) are updated with the batch mean
    of the per-instance mean and unbiased variance, as PyTorch does."""
    if not use_input_stats:
        return batch_norm_act(x, running_mean, running_var, weight, bias, False, momentum, eps,
                              activation, negative_slope)
    # an empty batch has no statistics: leave the running stats alone (PyTorch would write NaN)
    if (running_mean is not None or running_var is not None) and x.shape[0] > 0:
        with torch.no_grad():
            xs = x.detach().to(torch.float64 if x.dtype == torch.float64 else torch.float32)
            xs = xs.reshape(x.shape[0], x.shape[1], -1)
            spatial = xs.shape[-1]
            mean = xs.mean(-1).mean(0)
            var = xs.var(-1, unbiased=False).mean(0)
            update_running_stats(running_mean, running_var, mean, var, spatial, momentum)
    return group_norm_act(x, x.shape[1], weight, bias, eps, activation, negative_slope)


def layer_norm_act(x: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                   eps: float = 1e-5, activation: str = "leaky_relu", negative_slope: float = 0.2) -> torch.Tensor:
    """Per-sample statistics over (C, *spatial), per-channel affine: ``GroupNorm(1, C)``."""
    return group_norm_act(x, 1, weight, bias, eps, activation, negative_slope)
