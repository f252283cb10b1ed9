"""The trainer's generator / discriminator: fastgan's DCGAN or MLP models plus conditioning, packing and
output scaling, rebuilt from a plain-dict *spec* stored in every checkpoint.

:class:`Generator` wraps a base generator: ``forward(z, labels=None)``; with
a conditional model the label's embedding is concatenated to z (Mirza &
Osindero 2014; AC-GAN feeds the class the same way).  ``output="unit"``
maps the tanh output to [0, 1] (the option for unscaled inputs).  Its
attributes tell a user of a checkpoint what to feed it: ``nz``, ``z_dist``,
``num_classes``, ``data_kind`` ("image" or "toy"), ``output``.

:class:`Discriminator` wraps a base discriminator (which has ``features``
and ``head``): ``forward(x, labels=None)`` returns logits (N,);
``forward_all`` also returns class logits (AC-GAN head: a linear layer on
the flattened features, Odena et al. 2017) and the features (for feature
matching).  The embedding-conditioned D adds a projection term
<embed(y), features> to the logit (Miyato & Koyama 2018).

``conditional="semi"`` is the semi-supervised D of Salimans et al. 2016
(sec. 5): the classifier head gives K class logits l and the real / fake
logit is logsumexp(l), i.e. D(x) = Z / (Z + 1) with Z = sum_k exp(l_k).
``num_generators > 1`` (MGAN) adds ``generator_classifier``, a linear head on
the features that predicts which generator made a sample.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from ..models import (DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator, MultiHeadGenerator,
                      ResNetDiscriminator, ResNetGenerator, set_impl)
from .resnet_spec import apply_generator_extras, generator_extras, resnet_kwargs

_GENERATORS = {"dcgan": DCGANGenerator, "mlp": MLPGenerator, "resnet": ResNetGenerator}
_DISCRIMINATORS = {"dcgan": DCGANDiscriminator, "mlp": MLPDiscriminator, "resnet": ResNetDiscriminator}


class Generator(nn.Module):
    def __init__(self, base: nn.Module, nz: int, num_classes: int = 0, embed_dim: int = 0, output: str = "tanh",
                 z_dist: str = "normal", data_kind: str = "image"):
        super().__init__()
        if output not in ("tanh", "unit", "linear"):
            raise ValueError(f"output must be 'tanh', 'unit' or 'linear', got {output!r}")
        self.base = base
        self.nz, self.num_classes, self.embed_dim = nz, num_classes, embed_dim
        self.output, self.z_dist, self.data_kind = output, z_dist, data_kind
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None

    @property
    def conditional(self) -> bool:
        return self.embed is not None

    def forward(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.embed is not None:
            if labels is None:
                raise ValueError("this generator is conditional: pass labels (N,) with values in "
                                 f"[0, {self.num_classes})")
            z = torch.cat([z, self.embed(labels).to(z.dtype)], 1)
        x = self.base(z)
        if self.output == "unit":
            x = (x + 1.0) * 0.5
        return x

    def to_data_range(self, x: torch.Tensor) -> torch.Tensor:
        """Samples in the data's own range: [-1, 1] for images (whatever ``output``), raw points for toys."""
        return x * 2.0 - 1.0 if self.output == "unit" else x


class Discriminator(nn.Module):
    def __init__(self, base: nn.Module, feature_dim: int, num_classes: int = 0, conditional: str = "none",
                 num_generators: int = 1, spectral_norm_heads: bool = False):
        super().__init__()
        self.base = base
        self.conditional, self.num_classes = conditional, num_classes
        self.classifier = nn.Linear(feature_dim, num_classes) if conditional in ("acgan", "semi") else None
        self.generator_classifier = nn.Linear(feature_dim, num_generators) if num_generators > 1 else None
        self.projection = nn.Embedding(num_classes, feature_dim) if conditional == "embedding" else None
        if self.projection is not None:
            nn.init.normal_(self.projection.weight, 0.0, 0.02)
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, 0.0, 0.02)
            nn.init.zeros_(self.classifier.bias)
        if spectral_norm_heads:
            # model.spectral_norm is "every discriminator weight": the heads added here too -- the projection
            # term is part of the critic's output (Miyato & Koyama 2018 normalise the class embedding), and so
            # is the semi-supervised classifier's logsumexp
            from torch.nn.utils.parametrizations import spectral_norm

            for head in (self.classifier, self.generator_classifier, self.projection):
                if head is not None:
                    spectral_norm(head)

    def forward_all(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None):
        """(logits (N,), class logits (N, K) or None, features (N, ...))."""
        h = self.base.features(x)
        flat = h.flatten(1)
        class_logits = self.classifier(flat) if self.classifier is not None else None
        logits = torch.logsumexp(class_logits, 1) if self.conditional == "semi" else self.base.head(h)
        if self.projection is not None:
            if labels is None:
                raise ValueError("this discriminator is conditional: pass labels")
            logits = logits + (self.projection(labels).to(flat.dtype) * flat).sum(1)
        return logits, class_logits, h

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.forward_all(x, labels)[0]


def model_specs(cfg, data_info: dict) -> dict:
    """The plain-dict description of G and D that :func:`build_generator` / :func:`build_discriminator`
    rebuild; stored in checkpoints.  ``data_info``: kind, channels, image_size, num_classes, dataset."""
    m, t = cfg.model, cfg.tricks
    arch = cfg.resolved_arch()
    num_classes = int(data_info.get("num_classes") or 0) if m.conditional != "none" else 0
    semi = getattr(cfg.loss, "semi_supervised", False)
    embed = m.embed_dim if num_classes else 0
    if arch == "resnet":
        g_kwargs, d_kwargs, feature_dim = resnet_kwargs(cfg, data_info, embed)
        output = "tanh" if cfg.data.scale_inputs else "unit"
    elif arch == "dcgan":
        g_kwargs = dict(image_size=data_info["image_size"], nz=m.nz + embed, ngf=m.ngf,
                        channels=data_info["channels"], norm=m.g_norm, activation=m.g_activation,
                        fused=m.fused, impl=m.impl, init=m.init == "dcgan")
        if m.upsample != "convtranspose":
            g_kwargs["upsample"] = m.upsample
        d_kwargs = dict(image_size=data_info["image_size"], ndf=m.ndf, channels=data_info["channels"] * t.pack,
                        norm=m.d_norm, activation=m.d_activation, fused=m.fused, impl=m.impl,
                        init=m.init == "dcgan", downsample=m.downsample, minibatch=m.minibatch,
                        minibatch_kernels=m.minibatch_kernels, minibatch_kernel_dim=m.minibatch_kernel_dim,
                        stddev_group=m.stddev_group, spectral_norm=m.spectral_norm)
        k = data_info["image_size"].bit_length() - 3  # log2(size) - 2 blocks
        feature_dim = m.ndf * 2 ** (k - 1) * 16
        output = "tanh" if cfg.data.scale_inputs else "unit"
    else:
        g_kwargs = dict(nz=m.nz + embed, hidden=m.hidden, depth=m.depth, out_features=2, norm=m.g_norm,
                        activation=m.g_activation, fused=m.fused, impl=m.impl, init=m.init)
        d_kwargs = dict(in_features=2 * t.pack, hidden=m.hidden, depth=m.depth, norm=m.d_norm,
                        activation=m.d_activation, fused=m.fused, impl=m.impl, init=m.init, minibatch=m.minibatch,
                        minibatch_kernels=m.minibatch_kernels, minibatch_kernel_dim=m.minibatch_kernel_dim,
                        stddev_group=m.stddev_group, spectral_norm=m.spectral_norm)
        feature_dim = m.hidden
        output = "linear"
    kind = data_info.get("kind", "image")
    spec = {
        "generator": {"arch": arch, "kwargs": g_kwargs, "nz": m.nz, "num_classes": num_classes, "embed_dim": embed,
                      "output": output, "z_dist": m.z_dist, "data_kind": kind, **generator_extras(cfg)},
        "discriminator": {"arch": arch, "kwargs": d_kwargs, "feature_dim": feature_dim, "num_classes": num_classes,
                          "conditional": m.conditional if num_classes else "none", "pack": t.pack},
        "data": dict(data_info),
    }
    k = getattr(m, "num_generators", 1)
    if k > 1:  # MGAN (only then, so older specs stay as they were)
        spec["generator"]["num_generators"] = spec["discriminator"]["num_generators"] = k
    if m.spectral_norm and (spec["discriminator"]["conditional"] != "none" or k > 1 or semi):
        # (only then, so older specs -- and their checkpoints' parameter names -- stay as they were)
        spec["discriminator"]["spectral_norm_heads"] = True
    if semi:  # an unconditional G; D classifies the K real classes
        spec["discriminator"].update(conditional="semi", num_classes=int(data_info.get("num_classes") or 0))
    return spec


def build_generator(spec: dict, impl: Optional[str] = None) -> Generator:
    kwargs = dict(spec["kwargs"])
    if impl is not None:
        kwargs["impl"] = impl
    cls, k = _GENERATORS[spec["arch"]], spec.get("num_generators", 1)
    # MGAN: K generators (extras applied to each) sharing all layers but the first.
    bases = [apply_generator_extras(cls(**kwargs), spec) for _ in range(k)]
    base = MultiHeadGenerator(bases) if k > 1 else bases[0]
    return Generator(base, spec["nz"], spec["num_classes"], spec["embed_dim"], spec["output"], spec["z_dist"],
                     spec.get("data_kind", "image"))


def build_discriminator(spec: dict, impl: Optional[str] = None) -> Discriminator:
    kwargs = dict(spec["kwargs"])
    if impl is not None:
        kwargs["impl"] = impl
    base = _DISCRIMINATORS[spec["arch"]](**kwargs)
    return Discriminator(base, spec["feature_dim"], spec["num_classes"], spec["conditional"],
                         spec.get("num_generators", 1), spec.get("spectral_norm_heads", False))


def switch_impl(model: nn.Module, impl: str) -> nn.Module:
    """``fastgan.models.set_impl`` on the wrapped model (every fused layer)."""
    set_impl(model, impl)
    base = getattr(model, "base", None)
    if base is not None and isinstance(getattr(base, "config", None), dict):
        base.config["impl"] = impl
    return model


def spec_with_impl(spec: dict, impl: str) -> dict:
    spec = copy.deepcopy(spec)
    for part in ("generator", "discriminator"):
        spec[part]["kwargs"]["impl"] = impl
    return spec
