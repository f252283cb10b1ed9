"""GAN losses on discriminator logits.

=================  =========================================  ==========================================
loss               D minimises                                G minimises
=================  =========================================  ==========================================
``minimax``        BCE(D(x), t_real) + BCE(D(G(z)), t_fake)   log(1 - sigmoid(D(G(z))))  (Goodfellow 2014)
``nonsaturating``  the same                                   BCE(D(G(z)), 1) = -log sigmoid(D(G(z)))
``lsgan``          (D(x) - t_real)^2/2 + (D(G(z)) - t_fake)^2/2  (D(G(z)) - 1)^2 / 2   (Mao et al. 2017)
``hinge``          relu(1 - D(x)) + relu(1 + D(G(z)))         -D(G(z))                   (Lim & Ye 2017)
``wasserstein``    D(G(z)) - D(x)                             -D(G(z))                   (Arjovsky et al. 2017)
=================  =========================================  ==========================================

Each term is a mean over the batch.  ``t_real`` / ``t_fake`` are per-sample
targets (1 and 0 unless label smoothing or noisy labels change them); they
apply to the losses with targets only.  The minimax G loss is written
``-softplus(l)`` = log(1 - sigmoid(l)), stable for any logit.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

LOSSES = ("minimax", "nonsaturating", "lsgan", "hinge", "wasserstein")
WITH_TARGETS = ("minimax", "nonsaturating", "lsgan")


def _check(kind: str) -> None:
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")


def _targets(logits: torch.Tensor, targets, default: float) -> torch.Tensor:
    if targets is None:
        return torch.full_like(logits, default)
    if not torch.is_tensor(targets):
        return torch.full_like(logits, float(targets))
    return targets.to(logits.dtype).expand_as(logits)


def d_loss_minimum(kind: str, *, smoothing: float = 0.0, random: bool = False,
                   real_range=(0.7, 1.0), fake_range=(0.0, 0.3), flip: float = 0.0) -> float:
    """The least :func:`d_loss` can be on average with the D targets of ``fastgan.train.tricks.d_targets``
    (same arguments): D cannot tell a sample's random target, so its best output on one side is that side's
    mean target t, where BCE costs the binary entropy H(t) (BCE is linear in the target) and LSGAN's
    squared error half the targets' variance.  0 without target tricks, and for hinge / Wasserstein.  The
    failure watch's "D loss -> 0" compares D's loss with this, not with 0: one-sided smoothing of 0.1
    alone keeps a perfect D's BCE at H(0.9) = 0.325."""
    if kind not in WITH_TARGETS:
        return 0.0

    def side(real: bool) -> tuple[float, float]:  # (mean, variance) of one side's targets before flips
        if random:
            lo, hi = real_range if real else fake_range
            return (lo + hi) / 2, (hi - lo) ** 2 / 12
        return (1.0 - smoothing if real else 0.0), 0.0

    total = 0.0
    for real in (True, False):
        (m1, v1), (m2, v2) = side(real), side(not real)
        mean = (1 - flip) * m1 + flip * m2
        if kind == "lsgan":
            second = (1 - flip) * (v1 + m1 * m1) + flip * (v2 + m2 * m2)
            total += 0.5 * max(second - mean * mean, 0.0)
        elif 0.0 < mean < 1.0:
            total += -(mean * math.log(mean) + (1 - mean) * math.log(1 - mean))
    return total


def d_loss_real(kind: str, logits: torch.Tensor, targets=None) -> torch.Tensor:
    """D's loss on real samples (targets default 1)."""
    _check(kind)
    logits = logits.float()
    if kind in ("minimax", "nonsaturating"):
        return F.binary_cross_entropy_with_logits(logits, _targets(logits, targets, 1.0))
    if kind == "lsgan":
        return 0.5 * (logits - _targets(logits, targets, 1.0)).square().mean()
    if kind == "hinge":
        return F.relu(1.0 - logits).mean()
    return -logits.mean()


def d_loss_fake(kind: str, logits: torch.Tensor, targets=None) -> torch.Tensor:
    """D's loss on fake samples (targets default 0)."""
    _check(kind)
    logits = logits.float()
    if kind in ("minimax", "nonsaturating"):
        return F.binary_cross_entropy_with_logits(logits, _targets(logits, targets, 0.0))
    if kind == "lsgan":
        return 0.5 * (logits - _targets(logits, targets, 0.0)).square().mean()
    if kind == "hinge":
        return F.relu(1.0 + logits).mean()
    return logits.mean()


def d_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor, real_targets=None,
           fake_targets=None) -> torch.Tensor:
    return d_loss_real(kind, real_logits, real_targets) + d_loss_fake(kind, fake_logits, fake_targets)


def g_loss(kind: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """G's adversarial loss on D's logits for its samples."""
    _check(kind)
    logits = fake_logits.float()
    if kind == "minimax":
        return -F.softplus(logits).mean()  # log(1 - sigmoid(l)), minimised
    if kind == "nonsaturating":
        return F.softplus(-logits).mean()  # -log sigmoid(l)
    if kind == "lsgan":
        return 0.5 * (logits - 1.0).square().mean()
    return -logits.mean()


def feature_matching_loss(real_features: torch.Tensor, fake_features: torch.Tensor) -> torch.Tensor:
    """||mean_batch f(x) - mean_batch f(G(z))||^2 (Salimans et al. 2016, sec. 3.1); real features detached."""
    real = real_features.detach().flatten(1).float().mean(0)
    fake = fake_features.flatten(1).float().mean(0)
    return (real - fake).square().sum()


def d_accuracy(real_logits: Optional[torch.Tensor], fake_logits: Optional[torch.Tensor], kind: str) -> torch.Tensor:
    """Fraction of samples D puts on the right side of its decision threshold (0 for BCE, 0.5 for LSGAN), a
    0-d float32 tensor on the logits' device: read with the step's other statistics, not by a host sync
    of its own."""
    threshold = 0.5 if kind == "lsgan" else 0.0
    right = [t for t in ((None if real_logits is None else (real_logits > threshold).flatten()),
                         (None if fake_logits is None else (fake_logits <= threshold).flatten())) if t is not None]
    if not right or sum(t.numel() for t in right) == 0:
        return torch.zeros((), device=right[0].device if right else None)
    return torch.cat(right).float().mean()
