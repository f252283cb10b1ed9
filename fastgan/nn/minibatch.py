"""Layers that let a discriminator see the whole minibatch (against mode collapse).

* ``MinibatchDiscrimination`` (Salimans et al. 2016, "Improved Techniques for
  Training GANs", section 3.2): M = x @ T, features
  o[i, b] = sum_j exp(-||M[i,b] - M[j,b]||_1) by ``fastgan.ops.minibatch_discrimination``
  (fused kernels on GPU, a memory-lean path on CPU), output cat([x, o], 1).
* ``MinibatchStdDev`` (Karras et al. 2018, ProGAN; StyleGAN's
  ``MinibatchStdLayer``): the cheap alternative, one (or ``num_channels``)
  extra feature map holding the average standard deviation of the features
  over groups of ``group_size`` samples.  Plain PyTorch: a few reductions of
  O(N*C*H*W), nothing pairwise to fuse.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .._validation import check_positive_float
from ..ops.minibatch_discrimination import minibatch_discrimination
from ._checks import check_impl, check_input_matches

__all__ = ["MinibatchDiscrimination", "MinibatchStdDev"]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


class MinibatchDiscrimination(nn.Module):
    """Minibatch discrimination: returns ``cat([x, o], 1)`` of shape (N, in_features + num_kernels).

    ``T`` is (in_features, num_kernels, kernel_dim); M = x @ T is (N,
    num_kernels, kernel_dim) and o[i, b] = sum_j exp(-sum_c |M[i,b,c] - M[j,b,c]|).
    ``exclude_self`` drops the j = i term (which is 1); ``mean`` divides o by
    the number of terms summed (N, or N - 1 without self) so the features do
    not grow with the batch size.  An input with more than two dimensions is
    flattened to (N, in_features) first, as in the authors' layer.

    Initialisation follows the authors' code (openai/improved-gan,
    ``mnist_svhn_cifar10/nn.py``, ``MinibatchLayer``: ``theta =
    lasagne.init.Normal(0.05)`` of shape (num_inputs, num_kernels,
    dim_per_kernel)): T ~ N(0, 0.05^2).  That layer also weight-normalises
    theta per (kernel, dim) with a learned log-scale, initialises it from
    data, and adds a learned per-kernel bias (init -1) to o; here the layer is
    the contract's plain M = x @ T, so put a normalisation or bias after it if
    wanted.
    """

    def __init__(self, in_features: int, num_kernels: int, kernel_dim: int, exclude_self: bool = False,
                 mean: bool = False, impl: str = "auto", device=None, dtype=None):
        super().__init__()
        self.in_features = _positive_int("in_features", in_features)
        self.num_kernels = _positive_int("num_kernels", num_kernels)
        self.kernel_dim = _positive_int("kernel_dim", kernel_dim)
        if not isinstance(exclude_self, bool):
            raise TypeError(f"exclude_self must be a bool, got {type(exclude_self).__name__}")
        if not isinstance(mean, bool):
            raise TypeError(f"mean must be a bool, got {type(mean).__name__}")
        self.exclude_self = exclude_self
        self.mean = mean
        self.impl = check_impl(impl)
        self.T = nn.Parameter(torch.empty(in_features, num_kernels, kernel_dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.T, mean=0.0, std=0.05)

    @property
    def out_features(self) -> int:
        return self.in_features + self.num_kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(f"x must have shape (N, in_features={self.in_features}), got shape {tuple(x.shape)}")
        if x.dim() > 2:
            x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise ValueError(f"x must have in_features={self.in_features} features per sample, "
                             f"got shape {tuple(x.shape)}")
        check_input_matches(type(self).__name__, x, self.T)
        n = x.shape[0]
        m = (x @ self.T.reshape(self.in_features, -1)).reshape(n, self.num_kernels, self.kernel_dim)
        o = minibatch_discrimination(m, self.exclude_self, impl=self.impl)
        if self.mean:
            o = o / max(n - 1 if self.exclude_self else n, 1)
        return torch.cat([x, o.to(x.dtype)], dim=1)

    def extra_repr(self) -> str:
        s = f"in_features={self.in_features}, num_kernels={self.num_kernels}, kernel_dim={self.kernel_dim}"
        if self.exclude_self:
            s += ", exclude_self=True"
        if self.mean:
            s += ", mean=True"
        if self.impl != "auto":
            s += f", impl={self.impl!r}"
        return s


class MinibatchStdDev(nn.Module):
    """ProGAN / StyleGAN minibatch standard deviation: appends ``num_channels`` feature maps.

    x is (N, C, *spatial) (e.g. (N, C, H, W), or (N, C) for an MLP critic).
    The batch is split into groups of G = min(group_size, N) samples (sample
    k belongs to group k mod N/G, as in StyleGAN's ``reshape(G, -1, ...)``),
    the channels into ``num_channels`` groups of C / num_channels.  For each
    group, the standard deviation over its samples (biased, sqrt(var + 1e-8))
    is averaged over the channels of a channel group and all positions, and
    the result is broadcast as an extra constant feature map of each sample
    of the group: output (N, C + num_channels, *spatial).  ``group_size=None``
    uses the whole batch.  N must be a multiple of G (a ValueError otherwise,
    as StyleGAN's reshape would fail).  Statistics in float32 (float64 for
    float64 x).  Pure PyTorch (a few reductions; no fused kernel, so no
    ``impl``).
    """

    def __init__(self, group_size: Optional[int] = 4, num_channels: int = 1, eps: float = 1e-8):
        super().__init__()
        if group_size is not None:
            _positive_int("group_size", group_size)
        self.group_size = group_size
        self.num_channels = _positive_int("num_channels", num_channels)
        # sqrt(var + eps) of a constant group: eps = 0 gives an infinite derivative (NaN gradients)
        self.eps = check_positive_float("eps", eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating tensor, got {x.dtype}")
        if x.dim() < 2:
            raise ValueError(f"x must have shape (N, C, *spatial), got shape {tuple(x.shape)}")
        n, c = x.shape[0], x.shape[1]
        spatial = tuple(x.shape[2:])
        f = self.num_channels
        if c % f != 0:
            raise ValueError(f"the {c} channels of x must divide into num_channels={f} groups")
        if n == 0:  # an empty batch: no statistics and no sample to append them to
            return torch.cat([x, x.new_zeros((0, f) + spatial)], dim=1)
        g = n if self.group_size is None else min(self.group_size, n)
        if n % g != 0:
            raise ValueError(f"the batch size {n} must be a multiple of the group size {g} "
                             f"(group_size={self.group_size})")
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        y = x.to(compute).reshape(g, n // g, f, c // f, *spatial)  # [G, n, F, c, *spatial]
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + self.eps).sqrt()            # [n, F, c, *spatial]
        y = y.mean(dim=[2] + list(range(3, y.dim())))              # [n, F]
        y = y.reshape(n // g, f, *([1] * len(spatial))).repeat(g, 1, *spatial)  # [N, F, *spatial]
        return torch.cat([x, y.to(x.dtype)], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"
