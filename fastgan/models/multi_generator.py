"""K generators that share every layer but the first (MGAN, Hoang et al. 2018).

MGAN's generators differ only in their input layer, which maps z to the
first hidden representation; the rest is shared (the paper's parameter
sharing).  :class:`MultiHeadGenerator` takes K freshly built base generators
(DCGAN or MLP, each with ``main``, an ``nn.Sequential`` whose first layer
reads z), keeps the K first layers as ``heads`` and the rest of the first
one as the shared trunk.

Which generator makes which sample is fixed by position: sample i of a
batch comes from generator ``i % K`` (:func:`generator_ids`).  That is a
stratified draw from the uniform mixture MGAN samples from, it needs no
extra input (so ``Generator(z)``, the checkpoint, ``fastgan sample`` and
``load_generator`` work unchanged), and whoever trains the discriminator's
generator-classifier head knows the ids of a batch from its size alone.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn


def generator_ids(n: int, k: int, device=None) -> torch.Tensor:
    """The generator of each of ``n`` samples of a batch: ``arange(n) % k``."""
    return torch.arange(n, device=device) % k


class MultiHeadGenerator(nn.Module):
    """z (N, nz) -> samples; sample i from generator i % K (or ``ids[i]`` when given)."""

    def __init__(self, bases: Sequence[nn.Module]):
        super().__init__()
        bases = list(bases)
        if len(bases) < 2:
            raise ValueError(f"bases: MultiHeadGenerator needs >= 2 generators, got {len(bases)}")
        for b in bases:
            if not isinstance(getattr(b, "main", None), nn.Sequential):
                raise TypeError(f"bases: each generator needs a `main` nn.Sequential, got {type(b).__name__}")
        self.num_generators = len(bases)
        self.nz = bases[0].nz
        self.heads = nn.ModuleList([b.main[0] for b in bases])
        self.trunk = nn.Sequential(*list(bases[0].main)[1:])
        # DCGAN's first layer is a ConvTranspose2d on (N, nz, 1, 1); the MLP's a Linear on (N, nz).
        self._spatial = isinstance(self.heads[0], nn.ConvTranspose2d)
        self.config = dict(getattr(bases[0], "config", {}), num_generators=self.num_generators)

    def forward(self, z: torch.Tensor, ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.nz:
            raise ValueError(f"z must have shape (N, {self.nz}), got {tuple(z.shape)}")
        n, k = z.shape[0], self.num_generators
        x = z[:, :, None, None] if self._spatial else z
        if ids is None:  # the positional assignment: strided slices, no host sync
            rows = [torch.arange(j, n, k, device=z.device) for j in range(k)]
            parts = [(head(x[j::k]), rows[j]) for j, head in enumerate(self.heads) if j < n]
        else:
            ids = ids.to(z.device)
            if ids.shape != (n,) or (n and (int(ids.min()) < 0 or int(ids.max()) >= k)):
                raise ValueError(f"ids must have shape ({n},) with values in [0, {k})")
            rows = [(ids == j).nonzero().squeeze(1) for j in range(k)]
            parts = [(head(x[r]), r) for head, r in zip(self.heads, rows) if r.numel()]
        h = torch.cat([p for p, _ in parts], 0)
        order = torch.cat([r for _, r in parts], 0)
        return self.trunk(h[torch.argsort(order)])  # back in batch order
