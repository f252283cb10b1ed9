"""Experience replay of old fakes (Shrivastava et al. 2017, SimGAN sec. 2.3; ganhacks #15).

The buffer keeps up to ``capacity`` generated samples (detached, with their
labels when conditional).  ``mix(fake)`` replaces a fraction ``ratio`` of a
fake batch (its first round(ratio * N) rows) with samples drawn at random
from the buffer, once it holds that many; ``push(fake)`` stores new fakes:
all of them while the buffer fills, afterwards round(ratio * N) of them (at
least one) overwrite random slots -- SimGAN's "half the batch from the
buffer, then replace half the buffer's batch-worth with new samples".
Random choices use torch's global generator (restored on resume).
"""
from __future__ import annotations

from typing import Optional

import torch


class ReplayBuffer:
    def __init__(self, capacity: int, ratio: float = 0.5):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {ratio}")
        self.capacity, self.ratio = int(capacity), float(ratio)
        self.data: Optional[torch.Tensor] = None
        self.labels: Optional[torch.Tensor] = None
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def _count(self, n: int) -> int:
        return int(round(self.ratio * n))

    def mix(self, fake: torch.Tensor, labels: Optional[torch.Tensor] = None):
        """(batch, labels) with the first round(ratio * N) rows taken from the buffer (when it has enough)."""
        k = self._count(fake.shape[0])
        if k == 0 or self.size < k:
            return fake, labels
        idx = torch.randperm(self.size, device=self.data.device)[:k]
        old = self.data[idx].to(fake.dtype)
        fake = torch.cat([old, fake[k:]], 0)
        if labels is not None and self.labels is not None:
            labels = torch.cat([self.labels[idx], labels[k:]], 0)
        return fake, labels

    @torch.no_grad()
    def push(self, fake: torch.Tensor, labels: Optional[torch.Tensor] = None) -> None:
        fake = fake.detach()
        n = fake.shape[0]
        if self.data is None:
            self.data = torch.empty((self.capacity, *fake.shape[1:]), dtype=fake.dtype, device=fake.device)
            if labels is not None:
                self.labels = torch.zeros(self.capacity, dtype=torch.long, device=fake.device)
        if self.size < self.capacity:
            take = min(n, self.capacity - self.size)
            self.data[self.size:self.size + take] = fake[:take]
            if self.labels is not None and labels is not None:
                self.labels[self.size:self.size + take] = labels[:take]
            self.size += take
            return
        k = max(1, self._count(n))
        src = torch.randperm(n, device=fake.device)[:k]
        dst = torch.randperm(self.capacity, device=fake.device)[:k]
        self.data[dst] = fake[src]
        if self.labels is not None and labels is not None:
            self.labels[dst] = labels[src]

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "ratio": self.ratio, "size": self.size,
                "data": None if self.data is None else self.data[:self.size].cpu().clone(),
                "labels": None if self.labels is None else self.labels[:self.size].cpu().clone()}

    def load_state_dict(self, state: dict, device=None) -> None:
        self.size = int(state["size"])
        data = state["data"]
        if data is None:
            self.data, self.labels = None, None
            return
        self.data = torch.empty((self.capacity, *data.shape[1:]), dtype=data.dtype, device=device)
        self.data[:self.size] = data.to(device)
        if state.get("labels") is not None:
            self.labels = torch.zeros(self.capacity, dtype=torch.long, device=device)
            self.labels[:self.size] = state["labels"].to(device)
        else:
            self.labels = None
