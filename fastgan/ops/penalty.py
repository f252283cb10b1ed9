"""The fused pieces of the gradient penalties: autograd Functions and dispatch.

* ``interpolate(real, fake, epsilon)``: ``eps_i * real_i + (1 - eps_i) * fake_i``
  (one pass; the backward is one pass per input that needs a gradient);
* ``penalty_from_grad(grad, mode, center)``: per-sample L2 norms of the
  critic's input gradient, reduced to mean_i f(||g_i||) in one read of g;
  its backward ``coef_i * g`` (coef_i = 2 (||g_i|| - center) / (N ||g_i||)
  for "two-sided", 2 max(||g_i|| - center, 0) / (N ||g_i||) for
  "one-sided", 2 / N for "squared"; 0 where ||g_i|| = 0) is one read of g
  and one write.

``penalty.backward()`` differentiates the penalty w.r.t. g once, and
autograd continues into the critic's double backward: that backward runs the
kernels.  A second derivative of either piece (its backward run with
``create_graph=True``: a Hessian-vector product of the penalty, say) comes
from the reference's vector-Jacobian product in plain PyTorch; a third
raises rather than return wrong zeros
(``_autograd.twice_differentiable_backward``).  Kernels:
``fastgan/kernels/penalty.py`` (Triton) or ``torch.ops.fastgan.penalty_*``
(CUDA, ``csrc/penalty.cpp``).
"""
from __future__ import annotations

import functools
from typing import Union

import torch

from .. import _backend
from .._validation import check_tensor, is_finite_number
from ..reference import penalty as _ref
from ._autograd import reference_vjp, twice_differentiable_backward
from ._layout import kernel_layout, like

__all__ = ["interpolate", "penalty_from_grad", "MODES"]

MODES = _ref.MODES


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------- interpolation


class InterpolateFn(torch.autograd.Function):
    """(real, fake, epsilon) -> eps_n * real + (1 - eps_n) * fake."""

    @staticmethod
    def forward(ctx, real, fake, epsilon, backend):
        k = _backend.kernels(backend, "penalty")
        out = k.penalty_interpolate(real, fake, epsilon)
        ctx.save_for_backward(real, fake, epsilon)
        ctx.backend = backend
        return out

    @staticmethod
    def backward(ctx, grad):
        real, fake, epsilon = ctx.saved_tensors
        need = tuple(bool(b) for b in ctx.needs_input_grad[:3])
        if not any(need):
            return None, None, None, None
        grads = twice_differentiable_backward(functools.partial(_interpolate_backward, ctx.backend, need),
                                              reference_vjp(_ref.interpolate, need), grad, real, fake, epsilon)
        return tuple(grads) + (None,)


def _interpolate_backward(backend, need, grad, real, fake, epsilon):
    """(d real, d fake, d epsilon), None where not needed."""
    k = _backend.kernels(backend, "penalty")
    grad = like(grad, real)
    d_real = d_fake = d_epsilon = None
    if need[0] or need[1]:
        d_real, d_fake = k.penalty_interpolate_backward(grad, epsilon, need[0], need[1])
        d_real, d_fake = (d_real if need[0] else None), (d_fake if need[1] else None)
    if need[2]:
        d_epsilon = k.penalty_epsilon_grad(grad, real, fake)
    return d_real, d_fake, d_epsilon


def _epsilon_vector(name: str, epsilon, n: int, like_t: torch.Tensor) -> torch.Tensor:
    """epsilon as an (N,) tensor in the accumulator dtype (differentiable)."""
    acc = _acc_dtype(like_t)
    if isinstance(epsilon, (int, float)) and not isinstance(epsilon, bool):
        # every interpolate would be NaN (a tensor's values are not read: no sync)
        if not is_finite_number(epsilon):
            raise ValueError(f"{name} must be finite, got {epsilon}")
        return torch.full((n,), float(epsilon), dtype=acc, device=like_t.device)
    if not isinstance(epsilon, torch.Tensor):
        raise TypeError(f"{name} must be a float or a tensor with one value per sample, got {type(epsilon).__name__}")
    if not epsilon.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {epsilon.dtype}")
    if epsilon.device != like_t.device:
        raise ValueError(f"{name} is on {epsilon.device} but the inputs are on {like_t.device}")
    if epsilon.dim() == 0:
        return epsilon.to(acc).expand(n).contiguous()
    if epsilon.shape[0] != n or epsilon.numel() != n:
        raise ValueError(f"{name} must have one value per sample: shape ({n},) or ({n}, 1, ...), "
                         f"got shape {tuple(epsilon.shape)}")
    return epsilon.reshape(n).to(acc).contiguous()


def _check_pair(real, fake):
    check_tensor("real", real, min_dim=1)
    check_tensor("fake", fake, min_dim=1)
    if fake.shape != real.shape:
        raise ValueError(f"fake must have real's shape {tuple(real.shape)}, got {tuple(fake.shape)}")
    if fake.dtype != real.dtype:
        raise TypeError(f"fake must have real's dtype {real.dtype}, got {fake.dtype}")
    if fake.device != real.device:
        raise ValueError(f"real is on {real.device} but fake is on {fake.device}; put them on one device")


def interpolate(real: torch.Tensor, fake: torch.Tensor, epsilon: Union[torch.Tensor, float],
                impl: str = "auto") -> torch.Tensor:
    """``epsilon_i * real_i + (1 - epsilon_i) * fake_i`` in one fused pass.

    real, fake: (N, *) of one dtype; epsilon: one value per sample ((N,),
    (N, 1, ..., 1), a 0-dim tensor or a float).  Computed in float32 (float64
    for float64 inputs), returned in real's dtype; differentiable once w.r.t.
    all three, twice (a second derivative runs the reference's math)."""
    _check_pair(real, fake)
    n = real.shape[0]
    eps = _epsilon_vector("epsilon", epsilon, n, real)
    backend = _backend.resolve(impl, real.device, "interpolate")
    if backend == "ref" or real.numel() == 0:
        return _ref.interpolate(real, fake, eps)
    real = kernel_layout(real)
    return InterpolateFn.apply(real, like(fake, real), eps, backend)


# ----------------------------------------------------------------------------- norm + penalty


class PenaltyFromGradFn(torch.autograd.Function):
    """grad -> (mean_i f(||grad_i||), norms); norms are not differentiable."""

    @staticmethod
    def forward(ctx, grad, mode, center, backend):
        k = _backend.kernels(backend, "penalty")
        value, norms = k.penalty_forward(grad, mode, center)
        ctx.save_for_backward(grad, norms)
        ctx.config = (mode, center, backend)
        ctx.mark_non_differentiable(norms)
        return value, norms

    @staticmethod
    def backward(ctx, grad_value, _grad_norms):
        grad, norms = ctx.saved_tensors
        if grad_value is None or not ctx.needs_input_grad[0]:
            return None, None, None, None
        (dg,) = twice_differentiable_backward(functools.partial(_penalty_backward, ctx.config),
                                              functools.partial(_penalty_reference_backward, ctx.config),
                                              grad_value, grad, norms)
        return dg, None, None, None


_MODE_NAMES = {code: name for name, code in MODES.items()}


def _penalty_reference_backward(config, grad_value, grad, norms):
    """``_penalty_backward`` by the reference, differentiable (the op's second derivative differentiates it)."""
    mode, center, _ = config
    return reference_vjp(lambda g: _ref.penalty_from_grad(g, _MODE_NAMES[mode], center), (True,))(grad_value, grad)


def _penalty_backward(config, grad_value, grad, norms):
    mode, center, backend = config
    k = _backend.kernels(backend, "penalty")
    grad_value = grad_value.to(norms.dtype).reshape(())
    return (k.penalty_backward(grad_value, grad, norms, mode, center),)


def penalty_from_grad(grad: torch.Tensor, mode: str = "two-sided", center: float = 1.0,
                      return_norms: bool = False, impl: str = "auto"):
    """mean_i f(||grad_i||) over the N samples of ``grad`` (norms over all non-batch dims).

    ``mode``: ``"two-sided"`` f(n) = (n - center)^2 (WGAN-GP, DRAGAN),
    ``"one-sided"`` max(0, n - center)^2 (WGAN-LP), ``"squared"`` n^2 (R1, R2).
    Returns a 0-dim float32 tensor (float64 for float64 grad), and with
    ``return_norms`` also the detached (N,) norms.  Norms accumulate in float32
    whatever grad's dtype; a zero gradient gives a zero derivative, never NaN.
    Differentiable twice (a penalty's ``backward`` needs once; a second derivative runs the reference's
    math)."""
    check_tensor("grad", grad, min_dim=1)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {tuple(MODES)}, got {mode!r}")
    if isinstance(center, bool) or not isinstance(center, (int, float)):
        raise TypeError(f"center must be a float, got {type(center).__name__}")
    if not is_finite_number(center):
        raise ValueError(f"center must be finite, got {center}")
    if grad.shape[0] == 0:
        raise ValueError("grad must hold at least one sample (its first dimension is 0)")
    backend = _backend.resolve(impl, grad.device, "penalty_from_grad")
    if backend == "ref" or grad.numel() == 0:
        return _ref.penalty_from_grad(grad, mode, float(center), return_norms)
    value, norms = PenaltyFromGradFn.apply(kernel_layout(grad), MODES[mode], float(center), backend)
    return (value, norms) if return_norms else value
