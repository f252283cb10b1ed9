"""Historical averaging and old-snapshot swapping.

* Historical averaging (Salimans et al. 2016, sec. 3.3): each player's loss
  gets weight * ||theta - (1/t) sum_i theta_i||^2, the distance of its
  parameters to their running mean over the past t steps.
* Swapping in old checkpoints (ganhacks #15): every ``every`` steps a copy
  of G and D is kept (the last ``size``); at each step, with probability
  ``prob``, D trains on fakes of a random old G, and (independently) G trains
  against a random old D -- so neither can over-fit its current opponent.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn


class HistoricalAverage:
    def __init__(self, model: nn.Module, weight: float):
        self.weight = float(weight)
        self.count = 0
        self.mean = [p.detach().clone() for p in model.parameters()]

    def penalty(self, model: nn.Module) -> torch.Tensor:
        terms = [(p - m).square().sum() for p, m in zip(model.parameters(), self.mean)]
        return self.weight * torch.stack(terms).sum()

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current parameters into the running mean (call after each optimiser step)."""
        self.count += 1
        for m, p in zip(self.mean, model.parameters()):
            m.add_(p.detach() - m, alpha=1.0 / self.count)

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": [m.cpu().clone() for m in self.mean]}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])
        for m, s in zip(self.mean, state["mean"]):
            m.copy_(s)


class SnapshotPool:
    """Old state_dicts of one model, and a spare copy of it to load them into."""

    def __init__(self, model: nn.Module, every: int, size: int, prob: float):
        self.every, self.size, self.prob = int(every), int(size), float(prob)
        self.snapshots: list[dict] = []
        self.steps: list[int] = []
        self.spare = copy.deepcopy(model)
        for p in self.spare.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def maybe_snapshot(self, step: int, model: nn.Module) -> bool:
        """Keep a copy of ``model`` when ``step`` (the number of steps done) is a multiple of ``every``."""
        if step % self.every:
            return False
        self.snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        self.steps.append(step)
        if len(self.snapshots) > self.size:
            self.snapshots.pop(0)
            self.steps.pop(0)
        return True

    def draw(self) -> Optional[int]:
        """With probability ``prob`` the index of a random snapshot (torch's global generator), else None."""
        if not self.snapshots or self.prob <= 0:
            return None
        if torch.rand(()).item() >= self.prob:
            return None
        return int(torch.randint(len(self.snapshots), ()).item())

    def load(self, index: int, like: nn.Module) -> nn.Module:
        """The spare model holding snapshot ``index``, in ``like``'s train / eval mode."""
        self.spare.load_state_dict(self.snapshots[index])
        return self.spare.train(like.training)

    def state_dict(self) -> dict:
        return {"steps": list(self.steps),
                "snapshots": [{k: v.cpu() for k, v in s.items()} for s in self.snapshots]}

    def load_state_dict(self, state: dict, device=None) -> None:
        self.steps = list(state["steps"])
        self.snapshots = [{k: v.to(device) for k, v in s.items()} for s in state["snapshots"]]
