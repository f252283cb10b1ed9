"""MLP generator and discriminator for the 2D toy mixtures (ring8, grid25).

Same conventions as the DCGAN models: layers in one ``nn.Sequential``
``main``; ``fused=True`` uses ``fastgan.nn.BatchNormAct1d`` (+ ``nn.Identity``
in the activation's slot), ``fused=False`` ``nn.BatchNorm1d`` + activation,
with identical state_dict keys.  The discriminator returns logits (N,).
"""
from __future__ import annotations

import torch
from torch import nn

from .dcgan import (MINIBATCH, FeatureDiscriminator, _check_choice, _check_positive, _minibatch_layer,
                    apply_spectral_norm, check_activation, check_norm, dcgan_init, norm_act)


def _mlp(in_features: int, hidden: int, depth: int, out_features: int, norm: str, activation: str,
         negative_slope: float, fused: bool, impl: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(depth):
        layers.append(nn.Linear(width, hidden, bias=norm == "none"))
        layers += norm_act(hidden, norm, activation, negative_slope, fused, impl, dims=1)
        width = hidden
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class MLPGenerator(nn.Module):
    """z (N, nz) -> points (N, out_features); ``depth`` hidden layers of ``hidden`` units."""

    def __init__(self, nz: int = 2, hidden: int = 128, depth: int = 3, out_features: int = 2,
                 norm: str = "batch", activation: str = "relu", negative_slope: float = 0.2,
                 fused: bool = True, impl: str = "auto", init: str = "default"):
        super().__init__()
        _check_positive(nz=nz, hidden=hidden, depth=depth, out_features=out_features)
        check_norm(norm)
        check_activation(activation)
        if init not in ("default", "dcgan"):
            raise ValueError(f"init must be 'default' (PyTorch's) or 'dcgan', got {init!r}")
        self.config = dict(nz=nz, hidden=hidden, depth=depth, out_features=out_features, norm=norm,
                           activation=activation, negative_slope=negative_slope, fused=fused, impl=impl, init=init)
        self.nz = nz
        self.main = _mlp(nz, hidden, depth, out_features, norm, activation, negative_slope, fused, impl)
        if init == "dcgan":
            self.apply(dcgan_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.nz:
            raise ValueError(f"z must have shape (N, {self.nz}), got {tuple(z.shape)}")
        return self.main(z)


class MLPDiscriminator(FeatureDiscriminator):
    """points (N, in_features) -> logits (N,)."""

    def __init__(self, in_features: int = 2, hidden: int = 128, depth: int = 3, norm: str = "none",
                 activation: str = "leaky_relu", negative_slope: float = 0.2, fused: bool = True,
                 impl: str = "auto", init: str = "default", minibatch: str = "none", minibatch_kernels: int = 32,
                 minibatch_kernel_dim: int = 8, stddev_group: int = 4, spectral_norm: bool = False):
        super().__init__()
        _check_positive(in_features=in_features, hidden=hidden, depth=depth)
        check_norm(norm)
        check_activation(activation)
        _check_choice("minibatch", minibatch, MINIBATCH)
        if init not in ("default", "dcgan"):
            raise ValueError(f"init must be 'default' (PyTorch's) or 'dcgan', got {init!r}")
        self.config = dict(in_features=in_features, hidden=hidden, depth=depth, norm=norm, activation=activation,
                           negative_slope=negative_slope, fused=fused, impl=impl, init=init)
        if spectral_norm:
            self.config["spectral_norm"] = True
        if minibatch != "none":
            _check_positive(minibatch_kernels=minibatch_kernels, minibatch_kernel_dim=minibatch_kernel_dim,
                            stddev_group=stddev_group)
            self.config.update(minibatch=minibatch, minibatch_kernels=minibatch_kernels,
                               minibatch_kernel_dim=minibatch_kernel_dim, stddev_group=stddev_group)
        self.in_features = in_features
        self.main = _mlp(in_features, hidden, depth, 1, norm, activation, negative_slope, fused, impl)
        self._num_feature_layers = len(self.main) - 1
        if minibatch != "none":
            mb, extra = _minibatch_layer(minibatch, hidden, minibatch_kernels, minibatch_kernel_dim, stddev_group,
                                         impl)
            self.main = nn.Sequential(*self.main[:-1], mb, nn.Linear(hidden + extra, 1))
        if init == "dcgan":
            self.apply(dcgan_init)
        if spectral_norm:
            apply_spectral_norm(self)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x must have shape (N, {self.in_features}), got {tuple(x.shape)}")

