"""Latent-space interpolation grids and a nearest-neighbour grid to spot memorisation.

* :func:`slerp` / :func:`lerp`: spherical / linear interpolation between
  latent vectors.  For Gaussian z, slerp keeps the path at the typical norm
  of the prior (White 2016, "Sampling Generative Networks"); lerp passes
  through the low-norm centre, where a generator has seen few inputs.
* :func:`interpolation_grid`: ``rows`` pairs of random z, ``steps`` images
  from one to the other per row, saved with ``torchvision.utils.save_image``.
* :func:`nearest_neighbour_grid`: each generated image followed by its
  ``k`` nearest training images (L2 in pixel space, or in a feature space
  you pass); a row of near-copies means the generator memorised.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import torch
from torch import nn

INTERPOLATIONS = ("slerp", "lerp")


def lerp(z0: torch.Tensor, z1: torch.Tensor, t) -> torch.Tensor:
    """``(1 - t) z0 + t z1``; ``t`` a float or a tensor broadcasting over the batch (N,) or (N, 1)."""
    t = _t_like(t, z0)
    return (1 - t) * z0 + t * z1


def slerp(z0: torch.Tensor, z1: torch.Tensor, t, eps: float = 1e-7) -> torch.Tensor:
    """Spherical interpolation between rows of z0 and z1 (N, D) (or single vectors (D,)).

    ``sin((1-t) w) / sin w * z0 + sin(t w) / sin w * z1`` with w the angle
    between z0 and z1; falls back to :func:`lerp` where they are (anti)parallel.
    """
    squeeze = z0.dim() == 1
    a, b = (z0[None], z1[None]) if squeeze else (z0, z1)
    if a.shape != b.shape:
        raise ValueError(f"z0 and z1 must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    a2, b2 = a.flatten(1).double(), b.flatten(1).double()
    t = _t_like(t, a2)
    cos = (a2 * b2).sum(1, keepdim=True) / (a2.norm(dim=1, keepdim=True) * b2.norm(dim=1, keepdim=True)).clamp_min(eps)
    omega = torch.acos(cos.clamp(-1, 1))
    so = torch.sin(omega)
    near = so.abs() < 1e-4
    safe = torch.where(near, torch.ones_like(so), so)
    out = torch.where(near, (1 - t) * a2 + t * b2,
                      torch.sin((1 - t) * omega) / safe * a2 + torch.sin(t * omega) / safe * b2)
    out = out.to(a.dtype).reshape(a.shape)
    return out[0] if squeeze else out


def _t_like(t, z: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=z.dtype, device=z.device)
    if t.dim() == 1 and z.dim() == 2:
        t = t[:, None]
    return t


def interpolate(z0: torch.Tensor, z1: torch.Tensor, steps: int, mode: str = "slerp") -> torch.Tensor:
    """``steps`` points from z0 to z1 (inclusive): (steps, D) for vectors, (N, steps, D) for batches."""
    if mode not in INTERPOLATIONS:
        raise ValueError(f"mode must be one of {INTERPOLATIONS}, got {mode!r}")
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    fn = slerp if mode == "slerp" else lerp
    ts = torch.linspace(0, 1, steps)
    path = torch.stack([fn(z0, z1, float(t)) for t in ts], dim=0)  # (steps, [N,] D)
    return path if z0.dim() == 1 else path.transpose(0, 1)


@torch.no_grad()
def interpolation_grid(generator: nn.Module, nz: Optional[int] = None, rows: int = 8, steps: int = 10,
                       mode: str = "slerp", seed: int = 0, device=None, path: Optional[str] = None,
                       z_dist: str = "normal") -> torch.Tensor:
    """Images (rows * steps, C, H, W) in [-1, 1]: each row walks between two random z drawn as the
    generator was trained on them (``z_dist``: ``"normal"``, or ``"uniform"`` in [-1, 1]).

    ``generator`` maps z (N, nz) to images; it is run in eval mode (and put
    back).  With ``path``, the grid (``steps`` per row) is also saved as PNG.
    """
    nz = getattr(generator, "nz", None) if nz is None else nz
    if not nz:
        raise ValueError("nz is required (the generator has no .nz attribute)")
    device = next(generator.parameters()).device if device is None else torch.device(device)
    if z_dist not in ("normal", "uniform"):
        raise ValueError(f"z_dist must be 'normal' or 'uniform', got {z_dist!r}")
    g = torch.Generator().manual_seed(seed)
    draw = (lambda: torch.randn(rows, nz, generator=g)) if z_dist == "normal" else (
        lambda: torch.rand(rows, nz, generator=g) * 2 - 1)
    z0, z1 = draw(), draw()
    zs = interpolate(z0, z1, steps, mode).reshape(rows * steps, nz).to(device)
    was_training = generator.training
    generator.eval()
    try:
        images = torch.cat([generator(chunk) for chunk in zs.split(256)]).float().cpu()
    finally:
        generator.train(was_training)
    if path is not None:
        save_grid(images, path, nrow=steps)
    return images


def save_grid(images: torch.Tensor, path: str, nrow: int = 8, padding: int = 2) -> str:
    """Save [-1, 1] images as one PNG grid (``torchvision.utils.save_image``)."""
    from torchvision.utils import save_image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_image(images.detach().float().cpu(), path, nrow=nrow, padding=padding, normalize=True, value_range=(-1, 1))
    return path


@torch.no_grad()
def nearest_neighbours(samples: torch.Tensor, train: torch.Tensor, k: int = 5,
                       embed: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, batch_size: int = 1024
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (N, k) and distances (N, k) of the k nearest ``train`` rows to each sample (L2).

    Images are compared flattened, or after ``embed`` (e.g. classifier
    features).  ``train`` is streamed in chunks of ``batch_size``.
    """
    if samples.shape[1:] != train.shape[1:]:
        raise ValueError(f"samples {tuple(samples.shape[1:])} and training images {tuple(train.shape[1:])} "
                         "differ in shape")
    k = min(k, train.shape[0])
    f = (embed(samples) if embed else samples).flatten(1).float().cpu()
    best_d = torch.full((f.shape[0], 0), 0.0)
    best_i = torch.zeros((f.shape[0], 0), dtype=torch.long)
    for start in range(0, train.shape[0], batch_size):
        chunk = train[start:start + batch_size]
        ft = (embed(chunk) if embed else chunk).flatten(1).float().cpu()
        d = torch.cdist(f, ft)
        d_all = torch.cat([best_d, d], 1)
        i_all = torch.cat([best_i, torch.arange(start, start + chunk.shape[0]).expand(f.shape[0], -1)], 1)
        best_d, pos = d_all.topk(min(k, d_all.shape[1]), dim=1, largest=False)
        best_i = i_all.gather(1, pos)
    return best_i, best_d


def nearest_neighbour_grid(samples: torch.Tensor, train: torch.Tensor, path: Optional[str] = None, k: int = 5,
                           embed: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """Rows of [generated image, its k nearest training images], in [-1, 1]; saved as PNG with ``path``.

    The generated image and its neighbours are separated by a mid-grey
    tile so the first column reads as "query".
    """
    idx, _ = nearest_neighbours(samples, train, k, embed)
    rows = []
    sep = torch.zeros_like(samples[:1].float().cpu())
    for i in range(samples.shape[0]):
        rows.append(torch.cat([samples[i:i + 1].float().cpu(), sep, train[idx[i]].float().cpu()]))
    grid = torch.cat(rows)
    if path is not None:
        save_grid(grid, path, nrow=idx.shape[1] + 2)
    return grid
