"""Reference pixel shuffle (+ bias) (+ batch norm) + activation: ``nn.PixelShuffle``
followed by the same modules, in plain PyTorch."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .._activation import apply_activation
from .batch_norm_act import batch_norm_act


def _pixel_shuffle(x: torch.Tensor, upscale_factor: int) -> torch.Tensor:
    """``F.pixel_shuffle``, except for an empty x: PyTorch's backward of an empty
    pixel shuffle returns a gradient of the output's shape (a RuntimeError in
    autograd), so an empty x is reshaped instead (no values to move)."""
    if x.numel() == 0:
        n, c, h, w = x.shape
        r = upscale_factor
        return x.reshape(n, c // (r * r), h * r, w * r)
    return F.pixel_shuffle(x, upscale_factor)


def pixel_shuffle_act(x: torch.Tensor, upscale_factor: int, bias: Optional[torch.Tensor] = None,
                      activation: str = "leaky_relu", negative_slope: float = 0.2) -> torch.Tensor:
    y = _pixel_shuffle(x, upscale_factor)
    if bias is None:
        return apply_activation(y, activation, negative_slope)
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = y.to(compute) + bias.to(compute).view(1, -1, 1, 1)
    return apply_activation(y, activation, negative_slope).to(x.dtype)


def pixel_shuffle_batch_norm_act(x: torch.Tensor, upscale_factor: int, running_mean: Optional[torch.Tensor],
                                 running_var: Optional[torch.Tensor], weight: Optional[torch.Tensor],
                                 bias: Optional[torch.Tensor], training: bool, momentum: float, eps: float,
                                 activation: str = "leaky_relu", negative_slope: float = 0.2) -> torch.Tensor:
    return batch_norm_act(_pixel_shuffle(x, upscale_factor), running_mean, running_var, weight, bias, training,
                          momentum, eps, activation, negative_slope)
