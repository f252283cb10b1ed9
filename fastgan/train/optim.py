"""The trainer's optimisers, with L2 weight decay per network.

``optim.weight_decay_g`` / ``optim.weight_decay_d`` set each network's decay;
``optim.weight_decay_mode`` says how it enters:

* ``decoupled`` (default): AdamW (Loshchilov & Hutter 2019): after the Adam
  step, ``p <- p - lr * wd * p``, independent of the gradient statistics.
  For SGD the two forms coincide up to the momentum: torch's SGD
  ``weight_decay`` (which adds ``wd * p`` to the gradient) is used.
* ``coupled``: ``wd * p`` is added to the gradient before Adam normalises it
  (Adam's own ``weight_decay``, the classic L2 penalty ``wd/2 ||p||^2``).

The decay applies to every trainable parameter of that network (norm scales
and biases included).
"""
from __future__ import annotations

import torch

WEIGHT_DECAY_MODES = ("decoupled", "coupled")


def build_optimizer(params, kind: str, lr: float, betas=(0.5, 0.999), momentum: float = 0.0,
                    weight_decay: float = 0.0, mode: str = "decoupled") -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if kind not in ("adam", "sgd"):
        raise ValueError(f"kind must be 'adam' or 'sgd', got {kind!r}")
    if mode not in WEIGHT_DECAY_MODES:
        raise ValueError(f"mode must be one of {WEIGHT_DECAY_MODES}, got {mode!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    # On CUDA, PyTorch's fused Adam updates every parameter in one or two launches (the default
    # multi-tensor path takes about eight per step); CPU keeps the default implementation.
    fused = {"fused": True} if params and all(p.is_cuda for p in params) else {}
    if weight_decay > 0 and mode == "decoupled":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, **fused)
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, **fused)
