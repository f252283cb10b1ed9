"""Discriminator targets: one-sided label smoothing, random smoothing ranges, noisy (flipped) labels.

* One-sided label smoothing (Salimans et al. 2016, sec. 3.4): real targets
  1 - s, fake targets stay 0 (smoothing the fakes too would reinforce G's
  current samples).
* Random label smoothing (ganhacks #6, "soft and noisy labels"): each real
  target drawn from U(real_range) (default [0.7, 1.0]), each fake from
  U(fake_range) (default [0.0, 0.3]).  ganhacks' real range is [0.7, 1.2],
  which suits LSGAN's squared error; under binary cross-entropy a target
  t > 1 makes D's loss (1 - t) * logit unbounded below as the logit grows,
  rewarding D for ever larger real logits, so the trainer keeps BCE targets
  in [0, 1] (``fastgan.train.config.validate``).
* Noisy labels (ganhacks #6): each target is flipped with probability p,
  i.e. replaced by a target of the other side (drawn the same way).

Randomness comes from torch's global generator (or ``generator``), so a
resumed run draws the same targets.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch


def _side(n: int, real: bool, smoothing: float, random: bool, real_range: Sequence[float],
          fake_range: Sequence[float], device, generator) -> torch.Tensor:
    if random:
        lo, hi = (real_range if real else fake_range)
        return torch.rand(n, device=device, generator=generator) * (hi - lo) + lo
    return torch.full((n,), (1.0 - smoothing) if real else 0.0, device=device)


def d_targets(n: int, real: bool, *, smoothing: float = 0.0, random: bool = False,
              real_range: Sequence[float] = (0.7, 1.0), fake_range: Sequence[float] = (0.0, 0.3),
              flip: float = 0.0, device=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(n,) float32 targets for D's real (``real=True``) or fake samples."""
    t = _side(n, real, smoothing, random, real_range, fake_range, device, generator)
    if flip > 0:
        mask = torch.rand(n, device=device, generator=generator) < flip
        other = _side(n, not real, smoothing, random, real_range, fake_range, device, generator)
        t = torch.where(mask, other, t)
    return t
