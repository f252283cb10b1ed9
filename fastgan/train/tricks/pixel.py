"""A pixel-level reconstruction loss with a warm-up weight that decays.

For paired or reconstructive settings (pix2pix-style paired data, or an
encoder's reconstruction of a real image): G's output is pulled towards a
target image by L1 or L2, strongly at first (the warm-up, when the
adversarial signal is still noise) and then less and less, so that the
adversarial loss decides the details.  The weight schedule::

    w(step) = weight                                      step < warmup
    w(step) = weight * (1 - (step - warmup) / decay)      during the decay (linear, down to ``final``)
    w(step) = final * weight                              afterwards (final = 0 by default)

What the target is depends on the setting: the trainer applies the loss to the
(prediction, target) pair that ``Trainer.pixel_pair`` returns, and none of
fastgan's data sets has paired images, so on its own the trainer has no
target (see ``docs/tricks.md``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

PIXEL_LOSSES = ("none", "l1", "l2")


def pixel_loss(prediction: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean absolute (``l1``) or squared (``l2``) difference; the target gets no gradient."""
    if kind not in ("l1", "l2"):
        raise ValueError(f"kind must be 'l1' or 'l2', got {kind!r}")
    if prediction.shape != target.shape:
        raise ValueError(f"prediction and target must have one shape, got {tuple(prediction.shape)} and "
                         f"{tuple(target.shape)}")
    target = target.detach().to(prediction.dtype)
    return F.l1_loss(prediction, target) if kind == "l1" else F.mse_loss(prediction, target)


def pixel_weight(step: int, weight: float, warmup: int, decay: int, final: float = 0.0) -> float:
    """The schedule above (``step`` counts from 0; ``decay`` 0: no decay, the weight stays)."""
    if weight < 0 or warmup < 0 or decay < 0 or not 0.0 <= final <= 1.0:
        raise ValueError(f"need weight >= 0, warmup >= 0, decay >= 0 and final in [0, 1]; got weight={weight}, "
                         f"warmup={warmup}, decay={decay}, final={final}")
    if step < warmup or decay == 0:
        return float(weight)
    frac = min(1.0, (step - warmup) / decay)
    return float(weight * (1.0 - frac * (1.0 - final)))
