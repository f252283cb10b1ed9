"""A resumable stream of training batches.

Each epoch is a permutation of the data set drawn from its own generator,
seeded by (seed, epoch); the stream's position is (epoch, index), so a
checkpoint that stores those two numbers resumes the exact batch sequence.
In-memory data sets (the shipped digits, Fashion-MNIST, the toy mixtures)
are indexed directly on the training device (images stay uint8 there and
are scaled per batch); torchvision data sets go through a DataLoader fed
with the same permutation.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from ..data import DatasetUnavailableError, ImageTensorDataset, ToyDataset, to_unit_range


class DataStream:
    def __init__(self, dataset, batch_size: int, seed: int, device: torch.device, *, workers: Optional[int] = None):
        self.dataset, self.batch_size, self.seed, self.device = dataset, int(batch_size), int(seed), device
        self.epoch, self.index = 0, 0
        self._images = self._labels = self._points = None
        if isinstance(dataset, ImageTensorDataset):
            self._images = dataset.images.to(device)
            self._labels = dataset.labels.to(device)
        elif isinstance(dataset, ToyDataset):
            self._points, self._labels = dataset.tensors(device)
        self.n = len(dataset)
        if self.n < self.batch_size:
            raise ValueError(f"run.batch_size={self.batch_size} is larger than the data set ({self.n} samples)")
        self.workers = min(4, os.cpu_count() or 1) if workers is None else workers
        self._perm: Optional[torch.Tensor] = None
        self._perm_epoch = -1
        self._perm_on_device: Optional[torch.Tensor] = None
        self._perm_on_device_epoch = -1
        self._loader_iter = None
        self._loader_key = None

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._perm_epoch != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.n, generator=g)
            self._perm_epoch = epoch
        return self._perm

    def _permutation_on_device(self, epoch: int) -> torch.Tensor:
        """The epoch's permutation on the training device, for the in-memory data sets, copied there once
        an epoch: a batch's indices copied from the host each step would make the host wait for all the
        work queued on the GPU (a pageable host-to-device copy synchronises)."""
        if self._perm_on_device_epoch != epoch:
            self._perm_on_device = self.permutation(epoch).to(self.device)
            self._perm_on_device_epoch = epoch
        return self._perm_on_device

    def _take(self, idx: torch.Tensor):
        if self._images is not None:
            idx = idx.to(self.device)
            return to_unit_range(self._images[idx]), self._labels[idx]
        if self._points is not None:
            idx = idx.to(self.device)
            return self._points[idx], self._labels[idx]
        items = [self.dataset[int(i)] for i in idx]
        x = torch.stack([it[0] for it in items]).to(self.device, non_blocking=True)
        y = torch.tensor([int(it[1]) for it in items], device=self.device)
        return x, y

    def next(self):
        """(batch (B, ...) float32, labels (B,) int64); epochs without replacement, the last partial batch
        of an epoch dropped."""
        if self.index + self.batch_size > self.n:
            self.epoch += 1
            self.index = 0
        in_memory = self._images is not None or self._points is not None
        perm = self._permutation_on_device(self.epoch) if in_memory else self.permutation(self.epoch)
        idx = self._select(perm[self.index:self.index + self.batch_size])
        self.index += self.batch_size
        if not in_memory and self.workers > 0:
            return self._loader_next(idx)
        return self._take(idx)

    def _select(self, idx: torch.Tensor) -> torch.Tensor:
        """The part of a global batch this process loads (all of it; a rank's share under torch.distributed)."""
        return idx

    def _loader_next(self, idx: torch.Tensor):
        # A DataLoader per batch of indices would be slow; keep one over the rest of this epoch.
        key = (self.epoch, int(self.index - self.batch_size))
        if self._loader_iter is None or self._loader_key != key:
            perm = self.permutation(self.epoch)
            start = self.index - self.batch_size
            batches = [self._select(perm[i:i + self.batch_size]).tolist()
                       for i in range(start, self.n - self.batch_size + 1, self.batch_size)]
            # Its own generator: a DataLoader iterator otherwise draws its workers' base seed from torch's
            # global generator, and a resumed run (which starts a new iterator mid-epoch) would drift.
            seed_gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=batches, num_workers=self.workers,
                                                 pin_memory=self.device.type == "cuda", generator=seed_gen,
                                                 persistent_workers=False)
            self._loader_iter = iter(loader)
        try:
            x, y = next(self._loader_iter)
        except DatasetUnavailableError as exc:
            # Re-raised from a worker with "Caught ... in DataLoader worker" and the worker's traceback around
            # the message: keep the message (its last line, less the exception's class name).
            self._loader_iter = None
            last = str(exc).strip().splitlines()[-1]
            raise type(exc)(last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith("Error") else last) from None
        self._loader_key = (self.epoch, self.index)
        # (pinned on a GPU machine: both copies asynchronous)
        return x.to(self.device, non_blocking=True), torch.as_tensor(y).to(self.device, non_blocking=True)

    def fixed_batch(self, n: int, seed: int):
        """A batch chosen by ``seed`` alone (not advancing the stream): e.g. VBN's reference batch."""
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(self.n, generator=g)[:n]
        return self._take(idx)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "index": self.index, "batch_size": self.batch_size, "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        if int(state["n"]) != self.n:
            raise ValueError(f"the data set has {self.n} samples but the checkpoint's had {state['n']}")
        self.seed, self.epoch, self.index = int(state["seed"]), int(state["epoch"]), int(state["index"])
        self._loader_iter = None
