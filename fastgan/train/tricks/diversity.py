"""Mode-seeking regularisation (Mao et al. 2019, MSGAN) against mode collapse.

For two latents z1, z2 (and the same condition), G should map them to images
as far apart as the latents are:  ``ratio = d_I(G(z1), G(z2)) / d_z(z1, z2)``
is maximised.  As in the authors' code, both distances are mean absolute
differences over the whole pair of batches, and G minimises
``1 / (ratio + eps)`` (bounded where a plain ``-ratio`` is not), weighted by
``loss.mode_seeking``.
"""
from __future__ import annotations

import torch

EPS = 1e-5


def mode_seeking_ratio(fake1: torch.Tensor, fake2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """``mean|G(z1) - G(z2)| / mean|z1 - z2|`` (a scalar; differentiable in the fakes)."""
    if fake1.shape != fake2.shape:
        raise ValueError(f"fake1 and fake2 must have one shape, got {tuple(fake1.shape)} and {tuple(fake2.shape)}")
    if z1.shape != z2.shape or z1.shape[0] != fake1.shape[0]:
        raise ValueError(f"z1 and z2 must have one shape with the fakes' batch size {fake1.shape[0]}, got "
                         f"{tuple(z1.shape)} and {tuple(z2.shape)}")
    image_dist = (fake1.float() - fake2.float()).abs().mean()
    latent_dist = (z1.float() - z2.float()).abs().mean()
    return image_dist / latent_dist


def mode_seeking_loss(fake1: torch.Tensor, fake2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor,
                      eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """(``1 / (ratio + eps)``, ratio detached): what G minimises, and the ratio for the log."""
    ratio = mode_seeking_ratio(fake1, fake2, z1, z2)
    return 1.0 / (ratio + eps), ratio.detach()


def split_pairs(fake: torch.Tensor, z: torch.Tensor):
    """The two halves of a batch as (fake1, fake2, z1, z2): pairs of independent latents at no extra cost."""
    h = fake.shape[0] // 2
    if h < 1:
        raise ValueError(f"mode seeking needs a batch of at least 2, got {fake.shape[0]}")
    return fake[:h], fake[h:2 * h], z[:h], z[h:2 * h]
