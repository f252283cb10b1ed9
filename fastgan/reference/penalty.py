"""Reference pieces of the gradient penalties (plain PyTorch, any order).

The fused pieces of ``fastgan.penalties.gradient_penalty``:

* ``interpolate(real, fake, epsilon)``: ``eps_i * real_i + (1 - eps_i) * fake_i``
  with one epsilon per sample, computed in float32 (float64 for float64
  inputs) and returned in the inputs' dtype;
* ``penalty_from_grad(grad, mode, center)``: per-sample L2 norms of the
  critic's input gradient over all non-batch dimensions (float32
  accumulation) reduced to one scalar::

      "two-sided"  mean_i (||g_i|| - center)^2          WGAN-GP, DRAGAN
      "one-sided"  mean_i max(0, ||g_i|| - center)^2    WGAN-LP
      "squared"    mean_i ||g_i||^2                     R1, R2

  The penalty weight is applied by the caller.  At ||g_i|| = 0 the
  derivative of the norm is taken as 0 (``torch.linalg.vector_norm``'s
  convention), so a zero gradient never gives NaN.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

MODES = {"two-sided": 0, "one-sided": 1, "squared": 2}

__all__ = ["MODES", "interpolate", "per_sample_norms", "penalty_from_grad"]


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def interpolate(real: torch.Tensor, fake: torch.Tensor, epsilon: torch.Tensor) -> torch.Tensor:
    """``epsilon_i * real_i + (1 - epsilon_i) * fake_i``; epsilon has one value per sample."""
    acc = _acc_dtype(real)
    e = epsilon.to(acc).reshape([real.shape[0]] + [1] * (real.dim() - 1))
    return (e * real.to(acc) + (1 - e) * fake.to(acc)).to(real.dtype)


def per_sample_norms(grad: torch.Tensor) -> torch.Tensor:
    """(N,) L2 norms of each sample of ``grad`` over all non-batch dims, float32 (float64)."""
    return torch.linalg.vector_norm(grad.to(_acc_dtype(grad)).reshape(grad.shape[0], -1), dim=1)


def penalty_from_grad(grad: torch.Tensor, mode: str = "two-sided", center: float = 1.0,
                      return_norms: bool = False):
    """The mean over samples of the penalty of each sample's gradient norm (see the module doc).

    Returns a 0-dim float32 tensor (float64 for float64 ``grad``), and with
    ``return_norms`` also the detached (N,) per-sample norms."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {tuple(MODES)}, got {mode!r}")
    norms = per_sample_norms(grad)
    if mode == "squared":
        per_sample = grad.to(_acc_dtype(grad)).reshape(grad.shape[0], -1).square().sum(1)
    elif mode == "two-sided":
        per_sample = (norms - center).square()
    else:
        per_sample = F.relu(norms - center).square()
    value = per_sample.mean()
    return (value, norms.detach()) if return_norms else value
