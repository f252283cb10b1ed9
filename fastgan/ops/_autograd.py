"""Autograd helpers shared by the ops."""
from __future__ import annotations

import functools

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


class _KernelBackward(torch.autograd.Function):
    """An op's backward as its own Function (NVlabs stylegan3's pattern): its forward runs the kernels, its
    backward -- the op's second derivative, rarely asked for -- differentiates the reference's backward,
    and a third derivative raises (:func:`last_derivative`)."""

    @staticmethod
    def forward(ctx, kernel_backward, reference_backward, *args):
        ctx.reference_backward = reference_backward
        ctx.save_for_backward(*args)
        return kernel_backward(*args)

    @staticmethod
    def backward(ctx, *grads_of_outputs):
        args = ctx.saved_tensors
        second = functools.partial(_second_derivative, ctx.reference_backward, ctx.needs_input_grad[2:], len(args))
        return (None, None) + tuple(last_derivative(second, *args, *grads_of_outputs))


def _second_derivative(reference_backward, need, n, *args_and_grads):
    """The vector-Jacobian product of ``reference_backward`` (a backward in plain PyTorch) at the saved
    arguments, for the arguments that need it."""
    args, grads_of_outputs = args_and_grads[:n], args_and_grads[n:]
    with torch.enable_grad():
        # every floating argument a leaf of the graph (the reference backward differentiates w.r.t. the op's
        # inputs whether or not this derivative is wanted for them); the derivative taken for those that need it
        leaves = [a.detach().requires_grad_(a.is_floating_point()) if a is not None else None for a in args]
        outs = reference_backward(*leaves)
        pairs = [(o, g) for o, g in zip(outs, grads_of_outputs) if o is not None and g is not None and o.requires_grad]
        wanted = [leaf for leaf, want in zip(leaves, need) if want and leaf is not None and leaf.requires_grad]
        if not pairs or not wanted:
            return tuple(None for _ in args)
        found = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True))
    return tuple(next(found) if want and leaf is not None and leaf.requires_grad else None
                 for leaf, want in zip(leaves, need))


def twice_differentiable_backward(kernel_backward, reference_backward, *args) -> tuple:
    """An op's first derivative ``kernel_backward(*args)`` (a tuple: one gradient or None per input of the op);
    when a graph is being recorded (``create_graph=True``), as a Function whose own derivative is
    ``reference_backward``'s (the same tuple computed in plain PyTorch, differentiable).  Without one,
    the kernels run directly."""
    if not torch.is_grad_enabled():
        return kernel_backward(*args)
    return _KernelBackward.apply(kernel_backward, reference_backward, *args)


def reference_vjp(reference_forward, need):
    """A ``reference_backward`` for :func:`twice_differentiable_backward`: (grad_out, *inputs) -> the
    vector-Jacobian product of ``reference_forward(*inputs)`` for the inputs that ``need`` one, as a graph."""
    def backward(grad_out, *inputs):
        wanted = [x for x, n in zip(inputs, need) if n and x is not None and x.requires_grad]
        if not wanted:
            return tuple(None for _ in inputs)
        found = iter(torch.autograd.grad(reference_forward(*inputs), wanted, grad_out, create_graph=True,
                                         allow_unused=True))
        return tuple(next(found) if n and x is not None and x.requires_grad else None
                     for x, n in zip(inputs, need))
    return backward
