"""Unrolled GAN (Metz et al. 2017): G's loss against D unrolled K optimiser steps ahead.

The surrogate G loss is ``f(theta_G, theta_D^K(theta_G))`` where ``theta_D^0``
is D's current weights and ``theta_D^{k+1} = theta_D^k + update(grad L_D(theta_D^k,
theta_G))`` with D's own optimiser rule (SGD with momentum, or Adam, starting
from the real optimiser's state: its momentum / moment buffers and step count).
The unrolled steps are built with ``torch.autograd.grad(create_graph=True)`` on
a functional copy of D (``torch.func.functional_call``), so G's gradient flows
through every step; D itself then keeps its ordinary update (the trainer's D
step), never the unrolled weights.  As in the authors' toy code, every unrolled
step reuses the same real batch and the same fakes.

Derivative order: the unrolled weights contain first derivatives of D's loss,
and G's backward differentiates them once more, so every layer of D runs a
double backward -- for any K.  Nothing differentiates a double backward, so
fastgan's fused layers (which support exactly second order) suffice; the tests
check K = 2 and 3 through them.  Layers that cannot take part are refused by
name (:func:`check_unrollable`).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn
from torch.func import functional_call

#: Layers that cannot be unrolled, with the reason.  Virtual batch norm takes its statistics from a separate
#: reference pass (``virtual_batch_reference``) that a functional copy of D does not replay.
_REFUSED = {
    "VirtualBatchNorm1d": "its reference statistics come from a separate reference pass that the unrolled "
                          "(functional) copy of D does not replay",
    "VirtualBatchNorm2d": "its reference statistics come from a separate reference pass that the unrolled "
                          "(functional) copy of D does not replay",
}


def check_unrollable(d: nn.Module) -> None:
    """Raise ValueError naming the first layer of ``d`` that unrolling cannot differentiate through."""
    for name, module in d.named_modules():
        why = _REFUSED.get(type(module).__name__)
        if why is not None:
            raise ValueError(f"loss.unrolled_steps: the discriminator's layer {name or '(root)'} "
                             f"({type(module).__name__}) cannot be unrolled: {why}; use another model.d_norm")


class _ForwardAll(nn.Module):
    """Makes ``d.forward_all`` (or ``d.forward``) the ``forward`` that ``functional_call`` runs."""

    def __init__(self, d: nn.Module):
        super().__init__()
        self.d = d

    def forward(self, x, labels=None):
        if hasattr(self.d, "forward_all"):
            return self.d.forward_all(x, labels)
        return self.d(x)


class FunctionalD:
    """D evaluated with substituted weights: ``forward_all`` / ``__call__`` like the module itself."""

    def __init__(self, d: nn.Module, params: dict, buffers: dict):
        self._wrapper = _ForwardAll(d)
        self.module = d
        self.params, self.buffers = params, buffers

    def _call(self, x, labels=None):
        state = {f"d.{k}": v for k, v in {**self.buffers, **self.params}.items()}
        return functional_call(self._wrapper, state, (x, labels))

    def forward_all(self, x, labels=None):
        if not hasattr(self.module, "forward_all"):
            raise TypeError("forward_all needs a fastgan.train.models.Discriminator")
        return self._call(x, labels)

    def __call__(self, x, labels=None):
        out = self._call(x, labels)
        return out[0] if isinstance(out, tuple) else out


def _safe_sqrt(v: torch.Tensor) -> torch.Tensor:
    """sqrt(v) with a zero (not NaN) derivative at v == 0 (a parameter whose gradient is exactly 0)."""
    return torch.where(v > 0, v.clamp_min(1e-30).sqrt(), torch.zeros_like(v))


def _optimizer_rule(opt: Optional[torch.optim.Optimizer]) -> str:
    if opt is None or isinstance(opt, torch.optim.SGD):
        return "sgd"
    if type(opt) is torch.optim.AdamW:  # (optim.weight_decay_d > 0 with the default decoupled mode)
        return "adamw"
    if type(opt) is torch.optim.Adam:
        return "adamw" if any(g.get("decoupled_weight_decay") for g in opt.param_groups) else "adam"
    raise ValueError(f"loss.unrolled_steps: D's optimiser {type(opt).__name__} has no unrolled rule "
                     "(SGD, Adam and AdamW do)")


def unroll(d: nn.Module, d_loss: Callable[[FunctionalD], torch.Tensor], steps: int,
           opt: Optional[torch.optim.Optimizer] = None, *, lr: Optional[float] = None) -> FunctionalD:
    """D after ``steps`` differentiable optimiser steps on ``d_loss``; returns a :class:`FunctionalD`.

    ``d_loss(fd)`` computes D's loss with the functional D ``fd`` (its inputs -- e.g. G's fakes -- keep their
    graph, so the result is differentiable w.r.t. them).  ``opt`` is D's real optimiser: its rule (SGD with
    momentum / dampening / weight decay, Adam with weight decay, or AdamW), hyper-parameters and current state are
    reproduced; without one, plain SGD with learning rate ``lr``.  D's own weights, buffers and optimiser
    state are not changed (buffers such as batch-norm running statistics are cloned).
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    rule = _optimizer_rule(opt)
    if opt is None and lr is None:
        raise ValueError("unroll: pass D's optimiser (opt=) or a plain SGD learning rate (lr=)")
    named = dict(d.named_parameters())
    group_of, state_of = {}, {}  # by id(param): tensors compare elementwise, so never use them as keys
    if opt is not None:
        for group in opt.param_groups:
            if group.get("amsgrad") or group.get("nesterov") or group.get("maximize"):
                raise ValueError("loss.unrolled_steps: amsgrad / nesterov / maximize have no unrolled rule")
            for p in group["params"]:
                group_of[id(p)] = group
        state_of = {id(p): st for p, st in opt.state.items()}
        trainable = [n for n, p in named.items() if id(p) in group_of]
    else:
        trainable = [n for n, p in named.items() if p.requires_grad]
    params = {n: p.detach() for n, p in named.items()}
    for n in trainable:
        params[n] = params[n].requires_grad_(True)
    buffers = {n: b.detach().clone() for n, b in d.named_buffers()}
    # Per-parameter optimiser state, detached and copied: a constant for G, and the real state stays as it is.
    slots = {n: {k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in state_of.get(id(p), {}).items()}
             for n, p in named.items()}
    for _ in range(steps):
        fd = FunctionalD(d, params, buffers)
        loss = d_loss(fd)
        grads = torch.autograd.grad(loss, [params[n] for n in trainable], create_graph=True, allow_unused=True)
        new = dict(params)
        for n, g in zip(trainable, grads):
            if g is None:  # a parameter D's loss does not use (e.g. an unused head): unchanged
                continue
            new[n] = _step(rule, params[n], g, slots[n], group_of.get(id(named[n])), lr)
        params = new
    return FunctionalD(d, params, buffers)


def _step(rule: str, p: torch.Tensor, g: torch.Tensor, slot: dict, group: Optional[dict],
          lr: Optional[float]) -> torch.Tensor:
    """One differentiable optimiser step of ``p`` with gradient ``g``; ``slot`` (the state) is updated."""
    if group is None:
        return p - lr * g
    lr, wd = group["lr"], group.get("weight_decay", 0.0)
    if wd and rule == "adamw":  # torch.optim.AdamW: decay the weights first, then Adam without it
        p = p * (1.0 - lr * wd)
    elif wd:
        g = g + wd * p
    if rule == "sgd":  # torch.optim.SGD: buf = momentum * buf + (1 - dampening) * g (buf = g at first)
        mom, damp = group.get("momentum", 0.0), group.get("dampening", 0.0)
        if mom:
            buf = slot.get("momentum_buffer")
            buf = g if buf is None else mom * buf + (1.0 - damp) * g
            slot["momentum_buffer"] = buf
            g = buf
        return p - lr * g
    # torch.optim.Adam / AdamW (no amsgrad): bias-corrected first / second moments.
    b1, b2 = group["betas"]
    eps = group["eps"]
    t = float(slot.get("step", 0)) + 1.0
    m = slot.get("exp_avg")
    v = slot.get("exp_avg_sq")
    m = (1.0 - b1) * g if m is None else b1 * m + (1.0 - b1) * g
    v = (1.0 - b2) * g * g if v is None else b2 * v + (1.0 - b2) * g * g
    slot.update(step=t, exp_avg=m, exp_avg_sq=v)
    bc1, bc2 = 1.0 - b1 ** t, 1.0 - b2 ** t
    denom = _safe_sqrt(v) / (bc2 ** 0.5) + eps
    return p - (lr / bc1) * m / denom
