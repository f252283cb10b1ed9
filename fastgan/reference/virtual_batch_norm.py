"""Reference virtual batch normalization (Salimans et al. 2016), as the authors' code computes it.

Reference statistics per channel over the reference batch (N_ref, *spatial)::

    mu_r = mean(x_ref),   s_r = mean(x_ref ** 2)

For each live example i, with a = 1 / (N_ref + 1)::

    mu_i = a * mean_spatial(x_i) + (1 - a) * mu_r
    s_i  = a * mean_spatial(x_i ** 2) + (1 - a) * s_r
    y    = (x - mu_i) / sqrt(eps + max(s_i - mu_i ** 2, 0)) * gamma + beta

(the max: in floating point s_i - mu_i^2 can come out slightly negative when
the variance is tiny next to the mean; the exact value is >= 0).

The reference batch itself is normalised with (mu_r, s_r) alone.  Gradients
flow into mu_r and s_r (and so through the reference batch).
"""
from __future__ import annotations

from typing import Optional

import torch

from .._activation import apply_activation
from .batch_norm_act import channel_view_shape


def _compute(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)


def virtual_batch_reference_stats(x_ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu_r, s_r): per-channel mean and mean of squares over (N_ref, *spatial)."""
    xc = _compute(x_ref)
    dims = [0] + list(range(2, x_ref.dim()))
    return xc.mean(dim=dims), (xc * xc).mean(dim=dims)


def virtual_batch_norm(x: torch.Tensor, ref_mean: torch.Tensor, ref_sq_mean: torch.Tensor, ref_count: int,
                       weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                       eps: float = 1e-5, activation: str = "identity", negative_slope: float = 0.2,
                       reference_batch: bool = False) -> torch.Tensor:
    """Normalise live examples x (or, with ``reference_batch``, the reference batch itself)."""
    xc = _compute(x)
    shape = channel_view_shape(x)
    mu_r = ref_mean.to(xc.dtype).view(shape)
    s_r = ref_sq_mean.to(xc.dtype).view(shape)
    if reference_batch:
        mu, s = mu_r, s_r
    else:
        a = 1.0 / (ref_count + 1)
        spatial = list(range(2, x.dim()))
        own_mean = xc.mean(dim=spatial, keepdim=True) if spatial else xc
        own_sq = (xc * xc).mean(dim=spatial, keepdim=True) if spatial else xc * xc
        mu = a * own_mean + (1 - a) * mu_r
        s = a * own_sq + (1 - a) * s_r
    # s - mu^2 = E[x^2] - E[x]^2 cancels catastrophically when the variance is tiny next to
    # the mean (x = 1000 + 1e-3 noise in float32): a negative value would give NaN, so clamp
    var = (s - mu * mu).clamp_min(0)
    y = (xc - mu) * torch.rsqrt(eps + var)
    if weight is not None:
        y = y * weight.to(xc.dtype).view(shape)
    if bias is not None:
        y = y + bias.to(xc.dtype).view(shape)
    return apply_activation(y, activation, negative_slope).to(x.dtype)
