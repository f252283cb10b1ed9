"""DCGAN generator and discriminator (Radford et al. 2016) built from fastgan layers.

Both keep their layers in one ``nn.Sequential`` called ``main``, laid out as
in the PyTorch DCGAN example, so state_dict keys are the example's (the
64 px models load its weights).  With ``fused=True`` (the default) every
BatchNorm + activation pair is one ``fastgan.nn.BatchNormAct2d`` and the
activation's slot holds ``nn.Identity``; with ``fused=False`` it is a plain
``nn.BatchNorm2d`` followed by ``nn.ReLU`` / ``nn.LeakyReLU``.  The two
layouts have identical state_dict keys, so weights load either way, and
``fastgan.convert`` turns the plain model into the fused one.

Generator: z (N, nz) -> ConvTranspose 4x4 projection -> stride-2
ConvTranspose blocks with norm + ReLU -> ConvTranspose to ``channels`` ->
tanh.  Discriminator: stride-2 convs with LeakyReLU(0.2), no norm on the
first layer (as in the paper), a 4x4 valid conv to one logit per image (no
sigmoid: pair it with ``BCEWithLogits``).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from ..nn import (PixelShuffleUpsample, icnr_, BatchNormAct1d, BatchNormAct2d, GroupNormAct, InstanceNormAct2d, LayerNormAct2d,
                  MinibatchDiscrimination, MinibatchStdDev, VirtualBatchNorm1d, VirtualBatchNorm2d)

#: norms the models build: batch norm; per-sample norms for critics that must
#: not use batch statistics (instance: per channel, affine; layer: over
#: (C, H, W) with a per-channel affine, i.e. GroupNorm(1, C)); virtual batch
#: norm (statistics of a fixed reference batch, Salimans et al. 2016: run the
#: reference batch inside ``fastgan.nn.virtual_batch_reference(model)`` first).
NORMS = ("batch", "none", "instance", "layer", "vbn")
ACTIVATIONS = ("relu", "leaky_relu")
#: discriminator extras that let it see the whole minibatch.
MINIBATCH = ("none", "stddev", "discrimination")
DOWNSAMPLE = ("stride", "avgpool")
UPSAMPLE = ("convtranspose", "pixelshuffle")


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def check_activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return activation


def _check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _activation_module(activation: str, negative_slope: float) -> nn.Module:
    return nn.ReLU() if activation == "relu" else nn.LeakyReLU(negative_slope)


def norm_act(num_features: int, norm: str, activation: str, negative_slope: float = 0.2,
             fused: bool = True, impl: str = "auto", dims: int = 2) -> list[nn.Module]:
    """The modules that follow a conv / linear layer: norm + activation.

    ``dims`` is 2 for images (BatchNorm2d) and 1 for features (BatchNorm1d).
    Fused: ``[BatchNormAct(activation), nn.Identity()]``; plain:
    ``[nn.BatchNorm, activation]``: the same state_dict keys.  Without a norm
    there is nothing to fuse: ``[activation]``.  New norms plug in here.
    """
    check_norm(norm)
    check_activation(activation)
    if norm == "none":
        return [_activation_module(activation, negative_slope)]
    if norm in ("instance", "layer", "vbn"):
        return _other_norm_act(num_features, norm, activation, negative_slope, fused, impl, dims)
    if fused:
        cls = BatchNormAct2d if dims == 2 else BatchNormAct1d
        return [cls(num_features, activation=activation, negative_slope=negative_slope, impl=impl), nn.Identity()]
    bn = nn.BatchNorm2d(num_features) if dims == 2 else nn.BatchNorm1d(num_features)
    return [bn, _activation_module(activation, negative_slope)]


def _other_norm_act(num_features: int, norm: str, activation: str, negative_slope: float, fused: bool,
                    impl: str, dims: int) -> list[nn.Module]:
    """instance / layer / vbn: ``[fused norm+act, nn.Identity()]`` or ``[plain norm, activation]``."""
    act = _activation_module(activation, negative_slope)
    fused_kw = dict(activation=activation, negative_slope=negative_slope, impl=impl)
    if norm == "instance":
        if dims != 2:
            raise ValueError("norm='instance' needs feature maps (N, C, H, W); use 'layer' for an MLP")
        if fused:
            return [InstanceNormAct2d(num_features, affine=True, **fused_kw), nn.Identity()]
        return [nn.InstanceNorm2d(num_features, affine=True), act]
    if norm == "layer":
        if fused:
            cls = LayerNormAct2d if dims == 2 else (lambda c, **kw: GroupNormAct(1, c, **kw))
            return [cls(num_features, **fused_kw), nn.Identity()]
        return [nn.GroupNorm(1, num_features), act]
    # vbn: there is no plain-PyTorch layer; unfused it is the VBN layer without activation, then the activation.
    cls = VirtualBatchNorm2d if dims == 2 else VirtualBatchNorm1d
    if fused:
        return [cls(num_features, **fused_kw), nn.Identity()]
    return [cls(num_features, activation="identity", impl=impl), act]


def has_vbn(model: nn.Module) -> bool:
    """Whether ``model`` has virtual batch norm layers (which need a reference pass before use)."""
    return any(isinstance(m, (VirtualBatchNorm1d, VirtualBatchNorm2d)) for m in model.modules())


def _minibatch_layer(kind: str, features: int, kernels: int, kernel_dim: int, group_size: int, impl: str):
    """(layer, features it adds) for the discriminator's minibatch option."""
    if kind == "stddev":
        return MinibatchStdDev(group_size=group_size), 1
    return MinibatchDiscrimination(features, kernels, kernel_dim, mean=True, impl=impl), kernels


def apply_spectral_norm(model: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) of every conv / linear weight of ``model``."""
    from torch.nn.utils.parametrizations import spectral_norm

    for m in list(model.modules()):
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            spectral_norm(m)
    return model


@torch.no_grad()
def dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation, for ``model.apply``: conv / linear weights ~ N(0, 0.02),
    norm scales ~ N(1, 0.02), biases 0."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (_NormBase, nn.GroupNorm, nn.LayerNorm)):
        if getattr(module, "weight", None) is not None:
            nn.init.normal_(module.weight, 1.0, 0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


def set_impl(model: nn.Module, impl: str) -> nn.Module:
    """Switch every fused fastgan layer of ``model`` to backend ``impl``; returns the model."""
    from .._backend import IMPLS

    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    for m in model.modules():
        if type(m).__module__.startswith("fastgan.nn") and isinstance(getattr(m, "impl", None), str):
            m.impl = impl
    if hasattr(model, "config") and isinstance(model.config, dict) and "impl" in model.config:
        model.config["impl"] = impl
    return model


def _num_blocks(image_size: int) -> int:
    if not isinstance(image_size, int) or image_size < 8 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two >= 8 (32 and 64 are the DCGAN sizes), got {image_size!r}")
    return int(math.log2(image_size)) - 2


def check_image_batch(x: torch.Tensor, channels: int, image_size: int) -> None:
    """x must be (N, channels, image_size, image_size): a ValueError naming x otherwise."""
    expected = (channels, image_size, image_size)
    if x.dim() != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(f"x must have shape (N, {', '.join(map(str, expected))}), got {tuple(x.shape)}")


def check_discriminator_args(ndf, channels, norm, activation, downsample, minibatch) -> None:
    """The argument checks every image discriminator (DCGAN, ResNet) shares."""
    _check_positive(ndf=ndf, channels=channels)
    check_norm(norm)
    check_activation(activation)
    _check_choice("downsample", downsample, DOWNSAMPLE)
    _check_choice("minibatch", minibatch, MINIBATCH)


def _check_positive(**kwargs) -> None:
    for name, value in kwargs.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _pixel_shuffle_block(cin: int, cout: int, norm: str, activation: str, negative_slope: float, fused: bool,
                         impl: str) -> list[nn.Module]:
    """2x upsampling by sub-pixel convolution (ICNR-initialised): one fused
    ``PixelShuffleUpsample`` for batch norm or no norm; other norms follow it."""
    if fused and norm in ("batch", "none"):
        return [PixelShuffleUpsample(cin, cout, 2, 3, norm="batch" if norm == "batch" else None,
                                     activation=activation, negative_slope=negative_slope, impl=impl)]
    conv = nn.Conv2d(cin, cout * 4, 3, padding=1, bias=norm == "none")
    icnr_(conv.weight, 2)
    if norm == "none" and activation == "identity":  # the output block: tanh follows
        return [conv, nn.PixelShuffle(2)]
    return [conv, nn.PixelShuffle(2)] + norm_act(cout, norm, activation, negative_slope, fused, impl)


class DCGANGenerator(nn.Module):
    """z (N, nz) or (N, nz, 1, 1) -> images (N, channels, image_size, image_size) in [-1, 1].

    Widths: ngf * 2^(k-1), ..., ngf for k = log2(image_size) - 2 blocks
    (32 px: 4ngf, 2ngf, ngf; 64 px: 8ngf ... ngf).
    """

    def __init__(self, image_size: int = 32, nz: int = 100, ngf: int = 64, channels: int = 3,
                 norm: str = "batch", activation: str = "relu", negative_slope: float = 0.2,
                 fused: bool = True, impl: str = "auto", init: bool = True, upsample: str = "convtranspose"):
        super().__init__()
        k = _num_blocks(image_size)
        _check_positive(nz=nz, ngf=ngf, channels=channels)
        check_norm(norm)
        check_activation(activation)
        _check_choice("upsample", upsample, UPSAMPLE)
        self.config = dict(image_size=image_size, nz=nz, ngf=ngf, channels=channels, norm=norm,
                           activation=activation, negative_slope=negative_slope, fused=fused, impl=impl)
        if upsample != "convtranspose":  # keep the config of the default model as it was
            self.config["upsample"] = upsample
        self.image_size, self.nz, self.channels = image_size, nz, channels
        bias = norm == "none"
        widths = [ngf * 2 ** (k - 1 - i) for i in range(k)]
        layers: list[nn.Module] = [nn.ConvTranspose2d(nz, widths[0], 4, 1, 0, bias=bias)]
        layers += norm_act(widths[0], norm, activation, negative_slope, fused, impl)
        for cin, cout in zip(widths[:-1], widths[1:]):
            if upsample == "convtranspose":
                layers.append(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=bias))
                layers += norm_act(cout, norm, activation, negative_slope, fused, impl)
            else:
                layers += _pixel_shuffle_block(cin, cout, norm, activation, negative_slope, fused, impl)
        if upsample == "convtranspose":
            layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=bias), nn.Tanh()]
        else:
            layers += _pixel_shuffle_block(widths[-1], channels, "none", "identity", negative_slope, fused, impl)
            layers.append(nn.Tanh())
        self.main = nn.Sequential(*layers)
        if init:
            self.apply(dcgan_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            z = z[:, :, None, None]
        if z.dim() != 4 or z.shape[1] != self.nz or z.shape[2:] != (1, 1):
            raise ValueError(f"z must have shape (N, {self.nz}) or (N, {self.nz}, 1, 1), got {tuple(z.shape)}")
        return self.main(z)


class FeatureDiscriminator(nn.Module):
    """A discriminator whose ``main`` Sequential splits into features and a head.

    Subclasses set ``main``, ``_num_feature_layers`` and ``_check(x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.main(x).reshape(-1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden activations, e.g. for feature matching."""
        self._check(x)
        return self.main[:self._num_feature_layers](x)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (N,) from :meth:`features`' output: ``d(x) == d.head(d.features(x))``."""
        return self.main[self._num_feature_layers:](features).reshape(-1)


class DCGANDiscriminator(FeatureDiscriminator):
    """images (N, channels, image_size, image_size) -> logits (N,).

    Widths: ndf, 2ndf, ..., ndf * 2^(k-1) for k = log2(image_size) - 2
    stride-2 convs; the first has no norm.
    """

    def __init__(self, image_size: int = 32, ndf: int = 64, channels: int = 3, norm: str = "batch",
                 activation: str = "leaky_relu", negative_slope: float = 0.2, fused: bool = True,
                 impl: str = "auto", init: bool = True, downsample: str = "stride", minibatch: str = "none",
                 minibatch_kernels: int = 32, minibatch_kernel_dim: int = 8, stddev_group: int = 4,
                 spectral_norm: bool = False):
        super().__init__()
        k = _num_blocks(image_size)
        check_discriminator_args(ndf, channels, norm, activation, downsample, minibatch)
        self.config = dict(image_size=image_size, ndf=ndf, channels=channels, norm=norm, activation=activation,
                           negative_slope=negative_slope, fused=fused, impl=impl)
        # Options beyond the DCGAN paper's model enter the config only when used, so the
        # default model's config (and state_dict) is the one it always was.
        extras = dict(downsample=downsample, minibatch=minibatch, spectral_norm=spectral_norm)
        defaults = dict(downsample="stride", minibatch="none", spectral_norm=False)
        self.config.update({key: v for key, v in extras.items() if v != defaults[key]})
        if minibatch != "none":
            _check_positive(minibatch_kernels=minibatch_kernels, minibatch_kernel_dim=minibatch_kernel_dim,
                            stddev_group=stddev_group)
            self.config.update(minibatch_kernels=minibatch_kernels, minibatch_kernel_dim=minibatch_kernel_dim,
                               stddev_group=stddev_group)
        self.image_size, self.channels = image_size, channels
        bias = norm == "none"
        widths = [ndf * 2 ** i for i in range(k)]

        def down(cin, cout):
            if downsample == "stride":
                return [nn.Conv2d(cin, cout, 4, 2, 1, bias=bias)]
            return [nn.Conv2d(cin, cout, 3, 1, 1, bias=bias), nn.AvgPool2d(2)]

        layers: list[nn.Module] = down(channels, widths[0]) + [_activation_module(activation, negative_slope)]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += down(cin, cout)
            layers += norm_act(cout, norm, activation, negative_slope, fused, impl)
        self._num_feature_layers = len(layers)
        if minibatch == "none":
            layers.append(nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=bias))
        elif minibatch == "stddev":
            mb, extra = _minibatch_layer(minibatch, widths[-1], minibatch_kernels, minibatch_kernel_dim,
                                         stddev_group, impl)
            layers += [mb, nn.Conv2d(widths[-1] + extra, 1, 4, 1, 0, bias=bias)]
        else:
            flat = widths[-1] * 16
            mb, extra = _minibatch_layer(minibatch, flat, minibatch_kernels, minibatch_kernel_dim, stddev_group,
                                         impl)
            layers += [nn.Flatten(), mb, nn.Linear(flat + extra, 1)]
        self.main = nn.Sequential(*layers)
        if init:
            self.apply(dcgan_init)
        if spectral_norm:
            apply_spectral_norm(self)

    def _check(self, x: torch.Tensor) -> None:
        check_image_batch(x, self.channels, self.image_size)



def build_dcgan(image_size: int = 32, nz: int = 100, ngf: int = 64, ndf: int = 64, channels: int = 3,
                norm: str = "batch", d_norm: str | None = None, fused: bool = True, impl: str = "auto",
                init: bool = True) -> tuple[DCGANGenerator, DCGANDiscriminator]:
    """A matching (generator, discriminator) pair; ``d_norm`` defaults to ``norm``."""
    g = DCGANGenerator(image_size, nz, ngf, channels, norm=norm, fused=fused, impl=impl, init=init)
    d = DCGANDiscriminator(image_size, ndf, channels, norm=norm if d_norm is None else d_norm, fused=fused,
                           impl=impl, init=init)
    return g, d
