"""Autograd helpers shared by the ops."""
from __future__ import annotations

import torch

THIRD_ORDER_MESSAGE = ("fastgan's fused ops support first and second derivatives only; "
                       "a third-order derivative was requested (use impl='ref' for higher orders)")


class _LastDerivative(torch.autograd.Function):
    """Computes ``fn(*args)``; differentiating its outputs raises.

    ``once_differentiable`` is not enough: it hangs its error node on fresh
    leaves, so ``torch.autograd.grad(..., inputs=x)`` prunes that node and
    silently returns a third derivative with terms missing.  Here the error
    node takes the real inputs, so any path to them raises.
    """

    @staticmethod
    def forward(ctx, fn, *args):
        return fn(*args)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(THIRD_ORDER_MESSAGE)


def last_derivative(fn, *args):
    """Run a double-backward computation ``fn(*args)`` that cannot be differentiated again.

    Without grad mode (the usual ``penalty.backward()``, no ``create_graph``) nothing records a graph,
    so there is nothing to guard: ``fn`` runs directly, without a Function's host overhead."""
    if not torch.is_grad_enabled():
        return fn(*args)
    return _LastDerivative.apply(fn, *args)
