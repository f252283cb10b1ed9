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


def virtual_stats_affine(own_mean: Optional[torch.Tensor], own_sq: Optional[torch.Tensor], ref_mean: torch.Tensor,
                         ref_sq: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                         mix: float, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scale, shift, identity): the per-example affine tables of virtual batch norm, with
    ``z = x * scale + shift`` the normalised, affine-transformed x; differentiable.  The
    reference of the ``virtual_stats_affine`` kernels, which compute them in one launch.

    own_mean, own_sq: (N, C) spatial means of x and x^2 of the live examples, or None for the
    reference batch itself (then the tables are (C,) and mix is unused); ref_mean, ref_sq,
    weight, bias: (C,); mix: a = 1 / (N_ref + 1).  identity: (2, *scale.shape) zeros and ones
    (the mean and invstd of a normalisation the tables already hold), not differentiable.
    """
    if own_mean is None:
        mu, s = ref_mean, ref_sq
    else:
        mu, s = torch.lerp(ref_mean, own_mean, mix), torch.lerp(ref_sq, own_sq, mix)
    invstd = torch.rsqrt((s - mu * mu).clamp_min(0) + eps)
    scale = invstd if weight is None else invstd * weight
    shift = -(mu * scale) if bias is None else bias - mu * scale
    identity = torch.stack([torch.zeros_like(scale), torch.ones_like(scale)]).detach()
    return scale, shift, identity


def virtual_stats_affine_vjp(g_scale: torch.Tensor, g_shift: torch.Tensor, own_mean: Optional[torch.Tensor],
                             own_sq: Optional[torch.Tensor], ref_mean: torch.Tensor, ref_sq: torch.Tensor,
                             weight: Optional[torch.Tensor], mix: float, eps: float) -> tuple:
    """The gradients of ``virtual_stats_affine``'s (scale, shift) given theirs, as differentiable
    PyTorch: those of (own_mean, own_sq, ref_mean, ref_sq, weight, bias), own_mean's and own_sq's
    None without them, weight's and bias's whether or not they were given.  With
    G = g_scale - mu g_shift the whole gradient of scale (shift = b - mu scale)::

        g_w = sum G r,  g_b = sum g_shift,  g_var = G w (-r^3 / 2) where s - mu^2 > 0 (the clamp),
        g_mu = -scale g_shift - 2 mu g_var,  g_s = g_var,
        own: a g_mu, a g_s;  reference: sum (1 - a) g_mu, sum (1 - a) g_s   (sums over examples)."""
    own = own_mean is not None
    mu, s = (torch.lerp(ref_mean, own_mean, mix), torch.lerp(ref_sq, own_sq, mix)) if own else (ref_mean, ref_sq)
    var = torch.addcmul(s, mu, mu, value=-1.0)
    r = torch.rsqrt(var.clamp_min(0) + eps)
    scale = r if weight is None else r * weight
    g = torch.addcmul(g_scale, mu, g_shift, value=-1.0)
    g_r = g if weight is None else g * weight
    g_var = torch.where(var > 0, g_r * r.pow(3) * -0.5, torch.zeros_like(var))
    g_mu = torch.addcmul(-(scale * g_shift), mu, g_var, value=-2.0)
    per_channel = (lambda t: t.sum(0)) if own else (lambda t: t)  # noqa: E731
    g_w, g_b = per_channel(g * r), per_channel(g_shift)
    if not own:
        return None, None, g_mu, g_var, g_w, g_b
    return g_mu * mix, g_var * mix, g_mu.sum(0) * (1 - mix), g_var.sum(0) * (1 - mix), g_w, g_b


def virtual_stats_affine_backward(g_scale: torch.Tensor, g_shift: torch.Tensor, own_mean: Optional[torch.Tensor],
                                  own_sq: Optional[torch.Tensor], ref_mean: torch.Tensor, ref_sq: torch.Tensor,
                                  weight: Optional[torch.Tensor], mix: float,
                                  eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``virtual_stats_affine_vjp`` as the ``virtual_stats_affine_backward`` kernels return it, their
    reference: (g_own, g_channel), g_own (2, N, C) the gradients of own_mean and own_sq ((2, 0, C)
    without them), g_channel (4, C) those of ref_mean, ref_sq, weight and bias (each whether or not it
    was given)."""
    grads = virtual_stats_affine_vjp(g_scale, g_shift, own_mean, own_sq, ref_mean, ref_sq, weight, mix, eps)
    g_own = ref_mean.new_zeros((2, 0, ref_mean.shape[0])) if own_mean is None else torch.stack(grads[:2])
    return g_own, torch.stack(grads[2:])
