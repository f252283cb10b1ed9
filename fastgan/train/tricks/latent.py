"""Latent sampling and interpolation.

* Gaussian z (ganhacks #3; White 2016): z ~ N(0, I) (``dist="normal"``)
  instead of U[-1, 1]^nz (``"uniform"``).
* Spherical interpolation (White 2016, "Sampling generative networks"):
  slerp(a, b, t) = sin((1-t) w) / sin w * a + sin(t w) / sin w * b with w
  the angle between a and b: it stays on the shell where Gaussian z
  concentrates, unlike the straight line.
"""
from __future__ import annotations

from typing import Optional

import torch


def sample_z(n: int, nz: int, dist: str = "normal", device=None,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
    if dist == "normal":
        return torch.randn(n, nz, device=device, generator=generator)
    if dist == "uniform":
        return torch.rand(n, nz, device=device, generator=generator) * 2.0 - 1.0
    raise ValueError(f"z distribution must be 'normal' or 'uniform', got {dist!r}")


def sample_labels(n: int, num_classes: int, device=None, generator: Optional[torch.Generator] = None):
    return torch.randint(num_classes, (n,), device=device, generator=generator)


def slerp(a: torch.Tensor, b: torch.Tensor, t) -> torch.Tensor:
    """Spherical interpolation between rows of a and b (N, D) at t (scalar or (N,)); lerp where a || b."""
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
    if t.dim() == 1:
        t = t[:, None]
    an = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    bn = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    omega = torch.acos((an * bn).sum(1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    out = torch.sin((1 - t) * omega) / so * a + torch.sin(t * omega) / so * b
    lerp = (1 - t) * a + t * b
    return torch.where(so.abs() < 1e-6, lerp, out)


def slerp_grid(z: torch.Tensor, rows: int = 8, steps: int = 8) -> torch.Tensor:
    """(rows * steps, D): row r interpolates from z[2r] to z[2r + 1] in ``steps`` points (ends included)."""
    rows = min(rows, z.shape[0] // 2)
    if rows < 1:
        raise ValueError("slerp_grid needs at least two latent vectors")
    a, b = z[0:2 * rows:2], z[1:2 * rows:2]
    t = torch.linspace(0, 1, steps, dtype=z.dtype, device=z.device)
    out = [slerp(a, b, ti.expand(rows)) for ti in t]
    return torch.stack(out, 1).reshape(rows * steps, -1)
