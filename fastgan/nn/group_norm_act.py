"""Drop-in fused GroupNorm / InstanceNorm / LayerNorm + activation modules.

Critics trained with a per-sample gradient penalty (WGAN-GP) must not use
batch statistics; these normalise each sample on its own.  Constructor
order, defaults, parameter and buffer names follow ``nn.GroupNorm`` and
``nn.InstanceNorm2d`` so state dicts load both ways.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn.modules.instancenorm import _InstanceNorm

from .._activation import activation_code, activation_repr
from ..ops.group_norm_act import group_norm_act, instance_norm_act
from ._checks import check_eps, check_impl, check_input_rank, check_momentum, positive_int
from ._from_torch import drop_bias, placement, take_over


class GroupNormAct(nn.GroupNorm):
    """``nn.GroupNorm`` followed by an activation, fused.  ``nn.GroupNorm``'s arguments (``bias=False`` too),
    then ``activation`` (default ``"leaky_relu"`` with ``negative_slope`` 0.2; ``"relu"``, ``"identity"``)
    and ``impl``."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None, activation: str = "leaky_relu", negative_slope: float = 0.2,
                 impl: str = "auto", *, bias: bool = True):
        activation_code(activation, negative_slope)
        positive_int("num_groups", num_groups)
        positive_int("num_channels", num_channels)
        check_eps(eps)
        super().__init__(num_groups, num_channels, eps, affine, device, dtype)
        drop_bias(self, bias)
        self.activation, self.negative_slope, self.impl = activation, negative_slope, check_impl(impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm_act(x, self.num_groups, self.weight, self.bias, self.eps, self.activation,
                              self.negative_slope, impl=self.impl)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {activation_repr(self)}"


class LayerNormAct2d(GroupNormAct):
    """Per-sample statistics over (C, H, W), per-channel affine, then the activation.

    This is exactly ``GroupNormAct(1, num_channels)`` (and ``nn.GroupNorm(1, C)``),
    the critic normalisation of the WGAN-GP authors' code; unlike
    ``nn.LayerNorm([C, H, W])`` its affine parameters are per channel, so it
    does not fix the image size.  Its state dict is ``nn.GroupNorm(1, C)``'s.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True, device=None, dtype=None,
                 activation: str = "leaky_relu", negative_slope: float = 0.2, impl: str = "auto", *,
                 bias: bool = True):
        super().__init__(1, num_channels, eps, affine, device, dtype, activation, negative_slope, impl, bias=bias)

    def extra_repr(self) -> str:  # (its own arguments: GroupNorm's repr would read as LayerNormAct2d(1, C))
        return (f"{self.num_channels}, eps={self.eps}, affine={self.affine}"
                + ("" if self.bias is not None or not self.affine else ", bias=False")
                + f", {activation_repr(self)}")


class InstanceNormAct2d(_InstanceNorm):
    """``nn.InstanceNorm2d`` followed by an activation, fused (running stats when tracked).
    ``nn.InstanceNorm2d``'s arguments and defaults (affine=False, no running stats; ``bias=False`` too),
    then ``activation`` (default ``"leaky_relu"`` with ``negative_slope`` 0.2) and ``impl``."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = False,
                 track_running_stats: bool = False, device=None, dtype=None, activation: str = "leaky_relu",
                 negative_slope: float = 0.2, impl: str = "auto", *, bias: bool = True):
        activation_code(activation, negative_slope)
        positive_int("num_features", num_features)
        check_eps(eps)
        check_momentum(momentum)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        drop_bias(self, bias)
        self.activation, self.negative_slope, self.impl = activation, negative_slope, check_impl(impl)

    def _get_no_batch_dim(self):
        return 3

    def _check_input_dim(self, x):
        check_input_rank("InstanceNormAct2d", x, (4,))
        if x.shape[1] != self.num_features and not self.affine and not self.track_running_stats:
            # as nn.InstanceNorm2d: nothing per channel to mismatch, so a warning, not an error
            warnings.warn(f"InstanceNormAct2d({self.num_features}): x has {x.shape[1]} channels; num_features "
                          "is not used (affine=False, no running statistics)", UserWarning, stacklevel=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        use_input_stats = self.training or not self.track_running_stats
        momentum = self.momentum if self.momentum is not None else 0.0  # as nn.InstanceNorm2d
        return instance_norm_act(x, self.running_mean, self.running_var, self.weight, self.bias,
                                 use_input_stats, momentum, self.eps, self.activation, self.negative_slope,
                                 impl=self.impl)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {activation_repr(self)}"


def from_group_norm(gn: nn.GroupNorm, activation: str = "identity", negative_slope: float = 0.2,
                    impl: str = "auto") -> GroupNormAct:
    """A fused module with ``gn``'s configuration and weights."""
    fused = GroupNormAct(gn.num_groups, gn.num_channels, gn.eps, gn.affine, **placement(gn), activation=activation,
                         negative_slope=negative_slope, impl=impl, bias=gn.bias is not None)
    return take_over(gn, fused)


def from_instance_norm(inorm: nn.InstanceNorm2d, activation: str = "identity", negative_slope: float = 0.2,
                       impl: str = "auto") -> InstanceNormAct2d:
    """A fused module with ``inorm``'s configuration, weights and buffers."""
    fused = InstanceNormAct2d(inorm.num_features, inorm.eps, inorm.momentum, inorm.affine,
                              inorm.track_running_stats, **placement(inorm), activation=activation,
                              negative_slope=negative_slope, impl=impl, bias=inorm.bias is not None)
    return take_over(inorm, fused)
