"""An encoder q(z | x) for the hybrid VAE + GAN models (Larsen et al. 2016; ganhacks #16).

The trunk is a discriminator's feature extractor (the DCGAN conv stack for
images, the MLP for 2D points: the same building blocks, fused layers
included); a linear layer maps its features to the mean and log-variance of
a diagonal Gaussian over z.
"""
from __future__ import annotations

import torch
from torch import nn

from .dcgan import DCGANDiscriminator
from .mlp import MLPDiscriminator


class Encoder(nn.Module):
    """x -> (mu, logvar), each (N, nz)."""

    def __init__(self, trunk: nn.Module, feature_dim: int, nz: int):
        super().__init__()
        if not hasattr(trunk, "features"):
            raise TypeError(f"trunk: expected a module with a `features` method, got {type(trunk).__name__}")
        if nz < 1 or feature_dim < 1:
            raise ValueError(f"nz and feature_dim must be >= 1, got {nz} and {feature_dim}")
        self.trunk, self.nz = trunk, nz
        self.to_stats = nn.Linear(feature_dim, 2 * nz)
        nn.init.normal_(self.to_stats.weight, 0.0, 0.02)  # start near q = N(0, I): small mu, logvar ~ 0
        nn.init.zeros_(self.to_stats.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk.features(x).flatten(1)
        mu, logvar = self.to_stats(h).float().chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)  # exp(logvar) stays finite

    @staticmethod
    def sample(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps (the reparameterisation trick)."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def build_encoder(arch: str, nz: int, *, image_size: int = 32, channels: int = 1, ndf: int = 64, hidden: int = 128,
                  depth: int = 3, in_features: int = 2, norm: str = "batch", activation: str = "leaky_relu",
                  fused: bool = True, impl: str = "auto") -> Encoder:
    """A DCGAN-trunk (``arch="dcgan"``) or MLP-trunk (``arch="mlp"``) encoder to ``nz`` latents."""
    if arch == "dcgan":
        trunk = DCGANDiscriminator(image_size=image_size, ndf=ndf, channels=channels, norm=norm,
                                   activation=activation, fused=fused, impl=impl)
        k = image_size.bit_length() - 3
        feature_dim = ndf * 2 ** (k - 1) * 16
    elif arch == "mlp":
        trunk = MLPDiscriminator(in_features=in_features, hidden=hidden, depth=depth, norm=norm,
                                 activation=activation, fused=fused, impl=impl)
        feature_dim = hidden
    else:
        raise ValueError(f"arch must be 'dcgan' or 'mlp', got {arch!r}")
    return Encoder(trunk, feature_dim, nz)
