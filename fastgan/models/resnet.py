"""Residual generator and discriminator (SNGAN-style, Miyato et al. 2018; Gulrajani et al. 2017, appendix F),
with optional SAGAN self-attention (Zhang et al. 2019) and fastgan's fused norm + activation layers.

Generator block (pre-activation, upsampling)::

    main:     norm+act -> nearest 2x up -> conv3x3 -> norm+act -> conv3x3
    shortcut: nearest 2x up -> conv1x1                       (out = main + shortcut)

Discriminator block (downsampling)::

    main:     [norm+]act -> conv3x3 -> [norm+]act -> conv3x3 -> down
    shortcut: conv1x1 -> down                                (out = main + shortcut)

The first D block sees the image itself, so it has no leading activation
and its shortcut pools before the 1x1 conv (SNGAN's "optimized block").
``down`` is average pooling (SNGAN; ``downsample="avgpool"``) or, with
``downsample="stride"``, the second conv has stride 2 and the shortcut's
1x1 conv too.  Every norm + activation pair is one fused fastgan layer
(``fastgan.models.norm_act``): ``BatchNormAct2d`` in G by default,
``LayerNormAct2d`` / ``InstanceNormAct2d`` / none in D.

Sizes: ``k = log2(image_size) - 2`` blocks.  G: z -> linear -> (ngf*2^(k-1), 4, 4)
-> k up blocks (ngf*2^(k-1) ... ngf) -> norm+act -> conv3x3 -> tanh.  D: k down
blocks (ndf, 2ndf, ... ndf*2^(k-1); image_size -> 4) -> act -> sum over H, W
(SNGAN's global sum pooling) -> linear -> one logit.  ``attention_res`` puts a
:class:`~fastgan.models.attention.SelfAttention2d` after the block whose output
has that side (0: none), in G and D alike.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import SelfAttention2d
from .dcgan import (DOWNSAMPLE, _activation_module, _check_choice, _check_positive, _minibatch_layer, _num_blocks,
                    apply_spectral_norm, check_activation, check_discriminator_args, check_image_batch, check_norm,
                    dcgan_init, norm_act)


def _pre(num_features: int, norm: str, activation: str, negative_slope: float, fused: bool, impl: str):
    """The pre-activation ``norm+act`` as one module (fused: the fastgan layer; plain: norm then activation)."""
    return nn.Sequential(*norm_act(num_features, norm, activation, negative_slope, fused, impl))


def _check_attention_res(attention_res: int, image_size: int, sides) -> None:
    if not isinstance(attention_res, int) or isinstance(attention_res, bool) or attention_res < 0:
        raise ValueError(f"attention_res must be an int >= 0 (0: no attention), got {attention_res!r}")
    if attention_res and attention_res not in sides:
        raise ValueError(f"attention_res={attention_res} is not a feature-map side of a {image_size}px model; "
                         f"choose one of {sorted(sides)} (or 0)")


class ResBlockUp(nn.Module):
    """Generator block: (N, cin, S, S) -> (N, cout, 2S, 2S)."""

    def __init__(self, cin: int, cout: int, norm: str = "batch", activation: str = "relu",
                 negative_slope: float = 0.2, fused: bool = True, impl: str = "auto"):
        super().__init__()
        bias = norm == "none"
        self.pre1 = _pre(cin, norm, activation, negative_slope, fused, impl)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=bias)
        self.pre2 = _pre(cout, norm, activation, negative_slope, fused, impl)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(self.pre1(x), scale_factor=2, mode="nearest")
        h = self.conv2(self.pre2(self.conv1(h)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResBlockDown(nn.Module):
    """Discriminator block: (N, cin, S, S) -> (N, cout, S/2, S/2); ``first``: no leading activation."""

    def __init__(self, cin: int, cout: int, norm: str = "none", activation: str = "relu",
                 negative_slope: float = 0.2, fused: bool = True, impl: str = "auto", first: bool = False,
                 downsample: str = "avgpool"):
        super().__init__()
        _check_choice("downsample", downsample, DOWNSAMPLE)
        self.first, self.downsample = first, downsample
        stride = 2 if downsample == "stride" else 1
        self.pre1 = nn.Identity() if first else _pre(cin, norm, activation, negative_slope, fused, impl)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=norm == "none")
        self.pre2 = _pre(cout, norm, activation, negative_slope, fused, impl)
        self.conv2 = nn.Conv2d(cout, cout, 4 if stride == 2 else 3, stride, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1)

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2) if self.downsample == "avgpool" else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._down(self.conv2(self.pre2(self.conv1(self.pre1(x)))))
        if self.downsample == "stride":
            # A 1x1 conv with stride 2 is the 1x1 conv of every other pixel.  Written that way because torch
            # 2.14's CPU backward of a strided 1x1 conv on channels_last input (1 thread) corrupts the heap.
            return h + self.shortcut(x[:, :, ::2, ::2])
        if self.first:
            return h + self.shortcut(self._down(x))  # pool first: 4x cheaper, same result for a 1x1 conv
        return h + self._down(self.shortcut(x))


class ResNetGenerator(nn.Module):
    """z (N, nz) -> images (N, channels, image_size, image_size) in [-1, 1]."""

    def __init__(self, image_size: int = 32, nz: int = 128, ngf: int = 64, channels: int = 3,
                 norm: str = "batch", activation: str = "relu", negative_slope: float = 0.2, fused: bool = True,
                 impl: str = "auto", init: bool = True, attention_res: int = 0, dropout: float = 0.0,
                 spectral_norm: bool = False):
        super().__init__()
        k = _num_blocks(image_size)
        _check_positive(nz=nz, ngf=ngf, channels=channels)
        check_norm(norm)
        check_activation(activation)
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        widths = [ngf * 2 ** max(k - 1 - i, 0) for i in range(k + 1)]
        sides = {4 * 2 ** (i + 1) for i in range(k)}
        _check_attention_res(attention_res, image_size, sides)
        self.config = dict(image_size=image_size, nz=nz, ngf=ngf, channels=channels, norm=norm,
                           activation=activation, negative_slope=negative_slope, fused=fused, impl=impl,
                           init=init, attention_res=attention_res, dropout=dropout, spectral_norm=spectral_norm)
        self.image_size, self.nz, self.channels = image_size, nz, channels
        self.input = nn.Linear(nz, widths[0] * 16)
        self.blocks = nn.ModuleList(ResBlockUp(widths[i], widths[i + 1], norm, activation, negative_slope, fused,
                                               impl) for i in range(k))
        self.attention_after = -1
        self.attention = None
        if attention_res:
            self.attention_after = [4 * 2 ** (i + 1) for i in range(k)].index(attention_res)
            self.attention = SelfAttention2d(widths[self.attention_after + 1], sdpa="auto")
        # Dropout after every block but the last (pix2pix puts it in the decoder's inner layers); parameterless,
        # so the state_dict does not depend on it.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.out = nn.Sequential(_pre(widths[-1], norm, activation, negative_slope, fused, impl),
                                 nn.Conv2d(widths[-1], channels, 3, 1, 1), nn.Tanh())
        if init:
            self.apply(dcgan_init)
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 4 and z.shape[2:] == (1, 1):
            z = z.flatten(1)
        if z.dim() != 2 or z.shape[1] != self.nz:
            raise ValueError(f"z must have shape (N, {self.nz}) or (N, {self.nz}, 1, 1), got {tuple(z.shape)}")
        h = self.input(z).reshape(z.shape[0], -1, 4, 4)
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == self.attention_after:
                h = self.attention(h)
            if self.dropout is not None and i < len(self.blocks) - 1:
                h = self.dropout(h)
        return self.out(h)


class ResNetDiscriminator(nn.Module):
    """images (N, channels, image_size, image_size) -> logits (N,); ``features`` (N, ndf*2^(k-1)) feed ``head``."""

    def __init__(self, image_size: int = 32, ndf: int = 64, channels: int = 3, norm: str = "none",
                 activation: str = "relu", negative_slope: float = 0.2, fused: bool = True, impl: str = "auto",
                 init: bool = True, downsample: str = "avgpool", attention_res: int = 0, minibatch: str = "none",
                 minibatch_kernels: int = 32, minibatch_kernel_dim: int = 8, stddev_group: int = 4,
                 spectral_norm: bool = False):
        super().__init__()
        k = _num_blocks(image_size)
        check_discriminator_args(ndf, channels, norm, activation, downsample, minibatch)
        sides = {image_size // 2 ** (i + 1) for i in range(k)}
        _check_attention_res(attention_res, image_size, sides)
        self.config = dict(image_size=image_size, ndf=ndf, channels=channels, norm=norm, activation=activation,
                           negative_slope=negative_slope, fused=fused, impl=impl, init=init, downsample=downsample,
                           attention_res=attention_res, minibatch=minibatch, spectral_norm=spectral_norm)
        self.image_size, self.channels = image_size, channels
        widths = [ndf * 2 ** i for i in range(k)]
        self.blocks = nn.ModuleList()
        cin = channels
        for i, cout in enumerate(widths):
            self.blocks.append(ResBlockDown(cin, cout, norm, activation, negative_slope, fused, impl, first=i == 0,
                                            downsample=downsample))
            cin = cout
        self.attention_after = -1
        self.attention = None
        if attention_res:
            self.attention_after = [image_size // 2 ** (i + 1) for i in range(k)].index(attention_res)
            # The math SDPA kernel: penalties differentiate D's backward (see attention.py).
            self.attention = SelfAttention2d(widths[self.attention_after], sdpa="math")
        self.act = _activation_module(activation, negative_slope)
        self.feature_dim = widths[-1]
        if minibatch == "none":
            self.head_layers = nn.Sequential(nn.Linear(widths[-1], 1))
        else:
            _check_positive(minibatch_kernels=minibatch_kernels, minibatch_kernel_dim=minibatch_kernel_dim,
                            stddev_group=stddev_group)
            mb, extra = _minibatch_layer(minibatch, widths[-1], minibatch_kernels, minibatch_kernel_dim,
                                         stddev_group, impl)
            self.head_layers = nn.Sequential(mb, nn.Linear(widths[-1] + extra, 1))
        if init:
            self.apply(dcgan_init)
        if spectral_norm:
            apply_spectral_norm(self)

    def _check(self, x: torch.Tensor) -> None:
        check_image_batch(x, self.channels, self.image_size)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ndf*2^(k-1)): the activation of the last block summed over H, W (SNGAN's global sum pooling)."""
        self._check(x)
        h = x
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == self.attention_after:
                h = self.attention(h)
        return self.act(h).sum(dim=(2, 3))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head_layers(features).reshape(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
