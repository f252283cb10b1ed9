"""Extra terms of G's loss from issue 13: the mode-seeking regulariser and the pixel-level loss.

The trainer calls :func:`g_extra_losses` once per G step with the live fake batch, its latents and labels.
"""
from __future__ import annotations

from typing import Optional

import torch

from .config import ConfigError
from .tricks import sample_z
from .tricks.diversity import mode_seeking_loss, split_pairs
from .tricks.pixel import pixel_loss, pixel_weight

NO_TARGET = ("loss.pixel_loss: there is no target image for G's output: none of fastgan's data sets has paired "
             "images, so the pixel loss applies to reconstructions (turn on loss.hybrid) or where a Trainer "
             "subclass returns (prediction, target) from pixel_pair")


def mode_seeking_pairs(trainer, fake: torch.Tensor, z: torch.Tensor, labels: Optional[torch.Tensor]):
    """(fake1, fake2, z1, z2) with the same condition in each pair: the halves of the batch, or for a
    conditional G a second forward pass on fresh latents with the first half's labels."""
    if labels is None:
        return split_pairs(fake, z)
    h = fake.shape[0] // 2
    m = trainer.cfg.model
    z2 = sample_z(h, m.nz, m.z_dist, device=z.device).to(z.dtype)
    fake2 = trainer.G_train(z2, labels[:h])
    return fake[:h], fake2, z[:h], z2


def g_extra_losses(trainer, fake: torch.Tensor, z: torch.Tensor, labels: Optional[torch.Tensor]):
    """(extra loss or None, stats) for G's loss at ``trainer.step``."""
    lo = trainer.cfg.loss
    total, stats = None, {}
    if lo.mode_seeking > 0:
        ms, ratio = mode_seeking_loss(*mode_seeking_pairs(trainer, fake, z, labels))
        total = lo.mode_seeking * ms
        stats["mode_seeking_ratio"] = ratio
    if lo.pixel_loss != "none":
        pair = trainer.pixel_pair(fake, z, labels)
        if pair is None:
            raise ConfigError(NO_TARGET)
        w = pixel_weight(trainer.step, lo.pixel_weight, lo.pixel_warmup, lo.pixel_decay)
        pl = pixel_loss(pair[0], pair[1], lo.pixel_loss)
        stats["pixel_loss"], stats["pixel_weight"] = pl.detach(), w
        if w > 0:
            total = w * pl if total is None else total + w * pl
    return total, stats
