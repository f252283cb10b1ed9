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

``optim.fused_adam`` picks PyTorch's fused Adam / AdamW (one or two launches per
update instead of several per parameter group; auto: on when the parameters
are on CUDA; SGD stays unfused).  A fused optimiser can also skip an update on the device
(``step_unless_nonfinite``): the trainer's finiteness check then needs no
host read, and a step waits for the GPU only when its statistics are read.
"""
from __future__ import annotations

import torch

WEIGHT_DECAY_MODES = ("decoupled", "coupled")


FUSED_MODES = ("auto", "on", "off")


def build_optimizer(params, kind: str, lr: float, betas=(0.5, 0.999), momentum: float = 0.0,
                    weight_decay: float = 0.0, mode: str = "decoupled",
                    fused_adam: str = "auto", capturable: bool = False) -> torch.optim.Optimizer:
    """``capturable``: Adam keeps its step counts on the device and may be captured in a CUDA graph."""
    params = [p for p in params if p.requires_grad]
    if kind not in ("adam", "sgd"):
        raise ValueError(f"kind must be 'adam' or 'sgd', got {kind!r}")
    if mode not in WEIGHT_DECAY_MODES:
        raise ValueError(f"mode must be one of {WEIGHT_DECAY_MODES}, got {mode!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if fused_adam not in FUSED_MODES:
        raise ValueError(f"fused_adam must be one of {FUSED_MODES}, got {fused_adam!r}")
    # On CUDA, PyTorch's fused Adam updates every parameter in one or two launches (the default
    # multi-tensor path takes about eight per step); auto keeps the default implementation on CPU.
    use_fused = fused_adam == "on" or (fused_adam == "auto" and bool(params) and all(p.is_cuda for p in params))
    extra = {"fused": True} if use_fused else {}
    if capturable:
        extra["capturable"] = True
    if kind == "sgd":  # not fused: torch's fused SGD leaves its momentum uninitialised when a first step is skipped
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if weight_decay > 0 and mode == "decoupled":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, **extra)
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, **extra)


def skips_on_device(opt: torch.optim.Optimizer) -> bool:
    """Whether ``opt.step`` can be told on the device to skip its update: PyTorch's fused Adam / AdamW read
    ``found_inf``, the hook ``torch.amp.GradScaler`` uses (its fused SGD does too, but leaves the momentum
    uninitialised when the first step is skipped)."""
    return isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)) and all(g.get("fused") for g in opt.param_groups)


def step_unless_nonfinite(opt: torch.optim.Optimizer, finite: torch.Tensor) -> None:
    """``opt.step()`` that updates nothing (weights, moments, step counts) where the 0-d tensor ``finite``
    is False, decided on the device: no host read.  ``opt`` must pass :func:`skips_on_device`."""
    # The fused kernels return early when found_inf is nonzero and take the step count back; they read
    # grad_scale and found_inf from these attributes, set and removed around the step as GradScaler does.
    opt.grad_scale = None
    opt.found_inf = torch.logical_not(finite).to(torch.float32).reshape(())
    try:
        opt.step()
    finally:
        del opt.grad_scale, opt.found_inf
