"""The trainer's model spec for ``model.arch: resnet`` and the generator extras of issue 13 (dropout, spectral
norm in G) for every architecture; used by :mod:`fastgan.train.models`."""
from __future__ import annotations

from torch import nn

from ..models import add_dropout, apply_spectral_norm, keep_dropout_when_sampling


def resnet_kwargs(cfg, data_info: dict, embed: int) -> tuple[dict, dict, int]:
    """(generator kwargs, discriminator kwargs, feature_dim) of the ResNet pair for ``cfg``."""
    m, t = cfg.model, cfg.tricks
    size = data_info["image_size"]
    g_kwargs = dict(image_size=size, nz=m.nz + embed, ngf=m.ngf, channels=data_info["channels"], norm=m.g_norm,
                    activation=m.g_activation, fused=m.fused, impl=m.impl, init=m.init == "dcgan",
                    attention_res=m.attention_res, dropout=m.g_dropout, spectral_norm=m.g_spectral_norm)
    d_kwargs = dict(image_size=size, ndf=m.ndf, channels=data_info["channels"] * t.pack, norm=m.d_norm,
                    activation=m.d_activation, fused=m.fused, impl=m.impl, init=m.init == "dcgan",
                    downsample=m.downsample, attention_res=m.attention_res, minibatch=m.minibatch,
                    minibatch_kernels=m.minibatch_kernels, minibatch_kernel_dim=m.minibatch_kernel_dim,
                    stddev_group=m.stddev_group, spectral_norm=m.spectral_norm)
    k = size.bit_length() - 3  # log2(size) - 2 blocks
    return g_kwargs, d_kwargs, m.ndf * 2 ** (k - 1)


def generator_extras(cfg) -> dict:
    """Spec entries for G's dropout / spectral norm on the DCGAN and MLP generators (only when used, so the
    spec of a model without them is unchanged).  The ResNet generator takes them as constructor arguments."""
    m = cfg.model
    extras = {"dropout_sampling": True} if m.g_dropout_sampling else {}
    if cfg.resolved_arch() == "resnet":
        return extras
    if m.g_dropout > 0:
        extras["dropout"] = m.g_dropout
    if m.g_spectral_norm:
        extras["spectral_norm"] = True
    return extras


def apply_generator_extras(base: nn.Module, spec: dict) -> nn.Module:
    if spec.get("dropout"):
        add_dropout(base.main, spec["dropout"])
    if spec.get("spectral_norm"):
        apply_spectral_norm(base)
    if spec.get("dropout_sampling"):
        keep_dropout_when_sampling(base)
    return base
