"""Instance noise (Sonderby et al. 2017; Arjovsky & Bottou 2017; ganhacks #13).

Gaussian noise of standard deviation sigma(t) is added to every real and
fake input of D (in D's and G's steps alike), which makes the two
distributions overlap early on; sigma decays linearly from ``std`` at step
0 to 0 at step ``decay_steps`` and stays 0.
"""
from __future__ import annotations

import torch


def instance_noise_std(step: int, std: float, decay_steps: int) -> float:
    """sigma at ``step`` (0-based): std * max(0, 1 - step / decay_steps)."""
    if std <= 0:
        return 0.0
    if decay_steps <= 0:
        return float(std)
    return float(std) * max(0.0, 1.0 - step / decay_steps)


def add_instance_noise(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return x
    return x + sigma * torch.randn_like(x)
