"""Exponential moving average of G's weights (Karras et al. 2018; Yazici et al. 2019).

After every G step: theta_ema <- beta * theta_ema + (1 - beta) * theta (and
buffers, e.g. batch-norm running statistics, copied).  Before ``start`` the
average is a plain copy of G.  The averaged generator (``.model``, in eval
mode) is the one used for sample grids and saved for ``fastgan sample``.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, beta: float = 0.999, start: int = 0):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.beta, self.start = float(beta), int(start)
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold ``model``'s weights in; ``step`` is the 0-based G step just taken."""
        beta = self.beta if step >= self.start else 0.0
        for p_ema, p in zip(self.model.parameters(), model.parameters()):
            if beta == 0.0:
                p_ema.copy_(p.detach())
            else:
                p_ema.lerp_(p.detach(), 1.0 - beta)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
