"""PixelShuffle upsampling block: conv to out * r^2 channels, then one fused
shuffle (+ bias) (+ batch norm) + activation kernel.

Equal to ``conv -> nn.PixelShuffle(r) -> nn.BatchNorm2d -> activation`` (or
``conv(bias) -> nn.PixelShuffle(r) -> activation`` without a norm).  ICNR
initialisation (Aitken et al. 2017, "Checkerboard artifact free sub-pixel
convolution") makes the r^2 sub-kernels of each output channel equal, so the
block starts as conv followed by nearest-neighbour upsampling: no
checkerboard at initialisation.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .._activation import activation_code, activation_repr
from ..ops.pixel_shuffle_act import pixel_shuffle_act, pixel_shuffle_batch_norm_act
from ._checks import check_impl, check_input_matches, positive_int
from .batch_norm_act import batch_norm_step


@torch.no_grad()
def icnr_(weight: torch.Tensor, upscale_factor: int, init=nn.init.kaiming_normal_) -> torch.Tensor:
    """ICNR: initialise one sub-kernel per output channel with ``init`` and copy
    it to the r^2 sub-channels that pixel shuffle places in its r x r block."""
    out_r2 = weight.shape[0]
    r2 = upscale_factor ** 2
    if out_r2 % r2:
        raise ValueError(f"weight has {out_r2} output channels, not divisible by upscale_factor^2 = {r2}")
    sub = torch.empty((out_r2 // r2,) + tuple(weight.shape[1:]), device=weight.device, dtype=weight.dtype)
    init(sub)
    weight.copy_(sub.repeat_interleave(r2, dim=0))
    return weight


class PixelShuffleUpsample(nn.Module):
    """Upsample by ``scale`` with a sub-pixel convolution and a fused epilogue.

    ``.conv`` is the ``nn.Conv2d`` (in_channels -> out_channels * scale^2);
    with ``norm="batch"``, ``.norm`` is an ``nn.BatchNorm2d(out_channels)``
    holding the parameters and running statistics (its own forward is not
    used: the fused kernel reads them); without a norm, ``.bias`` is the
    per-output-channel bias applied after the shuffle.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int = 2, kernel_size: int = 3,
                 norm: Optional[str] = "batch", activation: str = "leaky_relu", negative_slope: float = 0.2,
                 icnr: bool = True, impl: str = "auto", device=None, dtype=None):
        super().__init__()
        if norm not in ("batch", None):
            raise ValueError(f"norm must be 'batch' or None, got {norm!r}")
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale must be a positive int, got {scale!r}")
        activation_code(activation, negative_slope)
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("kernel_size", kernel_size)):
            positive_int(name, value)
        factory = dict(device=device, dtype=dtype)
        self.scale, self.activation, self.negative_slope = scale, activation, negative_slope
        self.impl = check_impl(impl)
        # "same" padding keeps H x W, so the output is scale x the input for any kernel size (an even one
        # is padded one more at the bottom / right, as nn.Conv2d's padding="same" does)
        padding = kernel_size // 2 if kernel_size % 2 else "same"
        self.conv = nn.Conv2d(in_channels, out_channels * scale * scale, kernel_size, padding=padding, bias=False,
                              **factory)
        if icnr:
            icnr_(self.conv.weight, scale)
        if norm == "batch":
            self.norm = nn.BatchNorm2d(out_channels, **factory)
            self.register_parameter("bias", None)
        else:
            self.norm = None
            self.bias = nn.Parameter(torch.zeros(out_channels, **factory))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_matches(type(self).__name__, x, self.conv.weight)
        if x.dim() != 4 or x.shape[1] != self.conv.in_channels:  # (else the conv's own RuntimeError)
            raise ValueError(f"{type(self).__name__}: x must be (N, in_channels={self.conv.in_channels}, H, W), "
                             f"got shape {tuple(x.shape)}")
        h = self.conv(x)
        if self.norm is None:
            return pixel_shuffle_act(h, self.scale, self.bias, self.activation, self.negative_slope, impl=self.impl)
        running_mean, running_var, use_batch_stats, factor = batch_norm_step(self.norm)
        return pixel_shuffle_batch_norm_act(h, self.scale, running_mean, running_var, self.norm.weight,
                                            self.norm.bias, use_batch_stats, factor, self.norm.eps,
                                            self.activation, self.negative_slope, impl=self.impl)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, {activation_repr(self)}"
