"""Self-attention for convolutional GANs (SAGAN, Zhang et al. 2019).

``y = x + gamma * o(softmax(f(x)^T g(x)) h(x))`` over the H*W positions,
with 1x1 convolutions f, g (to ``C // 8`` channels), h (to ``C // 2``) and o
(back to C), and a learnable scalar ``gamma`` that starts at 0: at
initialisation the block is the identity and the network learns how much
non-local evidence to mix in (the paper's sec. 3).  The paper's attention
map is an unscaled softmax of the dot products, so ``scale=1.0`` is passed
to ``F.scaled_dot_product_attention`` (SAGAN's BigGAN-style code also
max-pools g and h; this block does not, to keep the paper's formula).

Double backward: ``F.scaled_dot_product_attention``'s fused CUDA kernels
(flash / memory-efficient) have no derivative of their backward, so a
gradient penalty (or an unrolled D) through them raises.  ``sdpa="math"``
runs the math kernel, which is differentiable to any order; the ResNet
discriminator uses it.  ``sdpa="auto"`` lets PyTorch pick (the generator,
never differentiated twice by the trainer).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

SDPA_MODES = ("auto", "math")


def _math_kernel():
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: the math kernel is picked whenever the others are turned off
        return torch.backends.cuda.sdp_kernel(enable_flash=False, enable_mem_efficient=False, enable_math=True)
    return sdpa_kernel(SDPBackend.MATH)


class SelfAttention2d(nn.Module):
    """SAGAN self-attention over the spatial positions of (N, C, H, W) feature maps; output shape = input shape.

    ``key_channels`` (default ``C // 8``, at least 1) is the size of the query / key projections,
    ``value_channels`` (default ``C // 2``) that of the values.  ``gamma`` is a learnable scalar, 0 at
    initialisation (the block starts as the identity).
    """

    def __init__(self, channels: int, key_channels: int | None = None, value_channels: int | None = None,
                 sdpa: str = "auto"):
        super().__init__()
        if not isinstance(channels, int) or isinstance(channels, bool) or channels <= 0:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        if sdpa not in SDPA_MODES:
            raise ValueError(f"sdpa must be one of {SDPA_MODES}, got {sdpa!r}")
        key_channels = max(1, channels // 8) if key_channels is None else key_channels
        value_channels = max(1, channels // 2) if value_channels is None else value_channels
        for name, value in (("key_channels", key_channels), ("value_channels", value_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.channels, self.sdpa = channels, sdpa
        self.query = nn.Conv2d(channels, key_channels, 1, bias=False)   # f
        self.key = nn.Conv2d(channels, key_channels, 1, bias=False)     # g
        self.value = nn.Conv2d(channels, value_channels, 1, bias=False)  # h
        self.out = nn.Conv2d(value_channels, channels, 1, bias=False)   # o (v in the paper)
        self.gamma = nn.Parameter(torch.zeros(()))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention output ``o(...)`` before the ``gamma``-weighted residual sum, (N, C, H, W)."""
        n, _, h, w = x.shape
        # (N, 1, HW, d): one head; SDPA attends over the HW positions.
        q = self.query(x).flatten(2).transpose(1, 2).unsqueeze(1)
        k = self.key(x).flatten(2).transpose(1, 2).unsqueeze(1)
        v = self.value(x).flatten(2).transpose(1, 2).unsqueeze(1)
        ctx = _math_kernel() if self.sdpa == "math" else contextlib.nullcontext()
        with ctx:
            a = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        a = a.squeeze(1).transpose(1, 2).reshape(n, -1, h, w)
        return self.out(a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"x must have shape (N, {self.channels}, H, W), got {tuple(x.shape)}")
        return x + self.gamma.to(x.dtype) * self.attention(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, sdpa={self.sdpa!r}"


def reference_self_attention(x: torch.Tensor, block: SelfAttention2d) -> torch.Tensor:
    """The SAGAN formula written out with an explicit (N, HW, HW) softmax: the ground truth for the block."""
    n, c, h, w = x.shape
    f = block.query(x).flatten(2)   # (N, dk, HW)
    g = block.key(x).flatten(2)
    hv = block.value(x).flatten(2)  # (N, dv, HW)
    beta = torch.softmax(f.transpose(1, 2) @ g, dim=-1)  # beta[i, j]: query position i attends to key position j
    a = (hv @ beta.transpose(1, 2)).reshape(n, -1, h, w)
    return x + block.gamma * block.out(a)
