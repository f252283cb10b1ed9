"""2D Gaussian mixtures for mode-collapse studies.

``ring8``: 8 Gaussians at angles 2*pi*k/8 on the unit circle, std 0.01.
``grid25``: 25 Gaussians centred on {-4, -2, 0, 2, 4}^2, std 0.05.

Each is a :class:`GaussianMixture2D` with equal weights whose ``centers``
(K, 2) and ``stds`` (K,) are exposed for mode-coverage metrics; ``sample``
returns points and the component each came from, and ``nearest_mode``
assigns generated points to modes.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch.utils.data import Dataset


class GaussianMixture2D:
    """Equal-weight mixture of isotropic 2D Gaussians."""

    def __init__(self, centers, std, name: str = ""):
        centers = torch.as_tensor(centers, dtype=torch.float32)
        if centers.dim() != 2 or centers.shape[1] != 2 or centers.shape[0] == 0:
            raise ValueError(f"centers must have shape (K, 2), got {tuple(centers.shape)}")
        std_t = torch.as_tensor(std, dtype=torch.float32)
        stds = std_t.expand(centers.shape[0]).clone()
        if (stds <= 0).any():
            raise ValueError("std must be positive")
        self._std = float(std) if std_t.dim() == 0 else None
        self.centers = centers
        self.stds = stds
        self.name = name

    @property
    def num_modes(self) -> int:
        return self.centers.shape[0]

    @property
    def std(self) -> float:
        """The common standard deviation (as given; for per-mode stds, their mean)."""
        return self._std if self._std is not None else float(self.stds.mean())

    def sample(self, n: int, generator: Optional[torch.Generator] = None, device=None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(points (n, 2) float32, component index (n,) int64)."""
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        modes = torch.randint(self.num_modes, (n,), generator=generator)
        noise = torch.randn(n, 2, generator=generator)
        points = self.centers[modes] + noise * self.stds[modes, None]
        return points.to(device), modes.to(device)

    def nearest_mode(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(index of the nearest centre, distance to it in units of that mode's std) per point."""
        centers = self.centers.to(points.device, points.dtype)
        dist = torch.cdist(points.reshape(-1, 2), centers)
        d, idx = dist.min(dim=1)
        return idx, d / self.stds.to(points.device, points.dtype)[idx]

    def __repr__(self) -> str:
        return f"GaussianMixture2D(name={self.name!r}, modes={self.num_modes}, std={self.std:g})"


def ring8(radius: float = 1.0, std: float = 0.01, num_modes: int = 8) -> GaussianMixture2D:
    """``num_modes`` Gaussians at angles 2*pi*k/num_modes on a circle of ``radius``."""
    angles = torch.arange(num_modes, dtype=torch.float64) * (2 * math.pi / num_modes)
    centers = torch.stack([radius * torch.cos(angles), radius * torch.sin(angles)], dim=1)
    return GaussianMixture2D(centers, std, name="ring8" if num_modes == 8 else f"ring{num_modes}")


def grid25(spacing: float = 2.0, std: float = 0.05, side: int = 5) -> GaussianMixture2D:
    """``side``^2 Gaussians on a grid with ``spacing``, centred at the origin ({-4..4}^2 by default)."""
    coords = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * spacing
    gx, gy = torch.meshgrid(coords, coords, indexing="ij")
    centers = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    return GaussianMixture2D(centers, std, name="grid25" if side == 5 else f"grid{side * side}")


TOY_MIXTURES = {"ring8": ring8, "grid25": grid25}


def toy_mixture(name: str) -> GaussianMixture2D:
    try:
        return TOY_MIXTURES[name]()
    except KeyError:
        raise ValueError(f"unknown toy dataset {name!r}; known: {', '.join(TOY_MIXTURES)}") from None


class ToyDataset(Dataset):
    """A fixed sample of a mixture: items are (point float32 (2,), component int)."""

    def __init__(self, mixture: GaussianMixture2D, num_samples: int = 100_000, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.mixture = mixture
        self.points, self.modes = mixture.sample(num_samples, generator=g)
        self.name = mixture.name

    def __len__(self) -> int:
        return self.points.shape[0]

    def __getitem__(self, index):
        return self.points[index], int(self.modes[index])

    @property
    def num_classes(self) -> int:
        return self.mixture.num_modes

    def tensors(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.points.to(device), self.modes.to(device)

    def __repr__(self) -> str:
        return f"ToyDataset(name={self.name!r}, n={len(self)}, modes={self.mixture.num_modes})"


def toy_dataset(name: str, num_samples: int = 100_000, seed: int = 0) -> ToyDataset:
    return ToyDataset(toy_mixture(name), num_samples, seed)
