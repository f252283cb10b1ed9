"""Exponential moving average of G's weights (Karras et al. 2018; Yazici et al. 2019).

After every G step: theta_ema <- beta * theta_ema + (1 - beta) * theta (and
buffers, e.g. batch-norm running statistics, copied).  Before ``start`` the
average is a plain copy of G.  The averaged generator (``.model``, in eval
mode) is the one used for sample grids and saved for ``fastgan sample``.
"""
from __future__ import annotations

import copy
from typing import Optional

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
    def update(self, model: nn.Module, step: int, finite: Optional[torch.Tensor] = None) -> None:
        """Fold ``model``'s weights in; ``step`` is the 0-based G step just taken.

        ``finite``: a 0-d bool tensor saying, on the device, whether G's update went through; where it is
        False the average stays as it was, without a host read (the trainer's device-side skip).
        """
        beta = self.beta if step >= self.start else 0.0
        params = [p.detach() for p in model.parameters()]
        ema_params = list(self.model.parameters())
        ema_buffers, buffers = list(self.model.buffers()), list(model.buffers())
        if finite is not None:
            # lerp with weight 0 leaves the average bit for bit, and with weight 1 gives the weights exactly
            weight = finite.to(torch.float32) * (1.0 - beta)
            for p_ema, p in zip(ema_params, params):
                p_ema.lerp_(p, weight)
            for b_ema, b in zip(ema_buffers, buffers):
                b_ema.copy_(torch.where(finite, b, b_ema))
            return
        # torch's multi-tensor ops: a launch or two per update on a GPU rather than one per tensor
        if beta == 0.0:
            torch._foreach_copy_(ema_params, params)
        else:
            torch._foreach_lerp_(ema_params, params, 1.0 - beta)
        if ema_buffers:
            torch._foreach_copy_(ema_buffers, buffers)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
