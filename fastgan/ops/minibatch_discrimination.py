"""Minibatch discrimination (Salimans et al. 2016): dispatch and autograd.

For M (N, B, C), d[i,j,b] = sum_c |M[i,b,c] - M[j,b,c]|, E = exp(-d),
s[i,j,b,c] = sign(M[i,b,c] - M[j,b,c])::

    o[i,b]     = sum_j E[i,j,b]                  (j != i with exclude_self)
    dM[i,b,c]  = -sum_j (g[i,b] + g[j,b]) E[i,j,b] s[i,j,b,c]
    w[i,j,b]   = sum_c (u[i,b,c] - u[j,b,c]) s[i,j,b,c]          (u: gradient of dM)
    grad_g     = -sum_j E w,     grad_M = sum_j (g[i] + g[j]) E w s

(the backward uses that E and the pair weights are symmetric and s is
antisymmetric; s is piecewise constant, so the double backward only
differentiates E again, and every j = i term vanishes because s[i,i] = 0).

Backends:

* ``triton`` / ``cuda``: fused kernels tiled over (b, i-block, j-block) with
  memory O(N*B*C) (``fastgan/kernels/minibatch_discrimination.py``, the CUDA
  ops ``torch.ops.fastgan.mbd_*`` with the same names and signatures);
* ``ref``: the materialising ground truth (N x N x B x C);
* under ``impl="auto"`` on CPU tensors, a memory-lean pure-PyTorch path
  (``_Lean``): ``torch.cdist(p=1)`` for d, E kept for the backward (memory
  O(N^2 B), never N^2 B C), the sign-weighted pair sums of both backward
  passes through ``aten::_cdist_backward`` (p=1: sum_j W[i,j] sign(x_i - x_j)),
  and w by a loop over c.  The same autograd Functions drive it.

Support is exactly first and second order: a third derivative raises.
"""
from __future__ import annotations

import functools

import torch

from .. import _backend, reference
from .._validation import check_tensor
from ._autograd import last_derivative

__all__ = ["minibatch_discrimination"]

OP = "minibatch_discrimination"


def _acc_dtype(m: torch.Tensor) -> torch.dtype:
    return torch.float64 if m.dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------- memory-lean CPU path


def _signed_pair_sum_loop(weights: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
    """out[b,i,c] = sum_j weights[b,i,j] * sign(xb[b,i,c] - xb[b,j,c]), one c at a time."""
    out = torch.empty_like(xb)
    tmp = torch.empty_like(weights)
    for c in range(xb.shape[-1]):
        xc = xb[:, :, c]
        torch.sub(xc.unsqueeze(2), xc.unsqueeze(1), out=tmp)
        tmp.sign_().mul_(weights)
        torch.sum(tmp, dim=-1, out=out[:, :, c])
    return out


def _signed_pair_sum(weights: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
    """As ``_signed_pair_sum_loop``; aten's cdist backward computes exactly this for p=1
    (grad * sign(x1_i - x2_j), no division by the distance) without any N^2 C buffer."""
    try:
        return torch.ops.aten._cdist_backward(weights, xb, xb, 1.0, weights)
    except (AttributeError, RuntimeError, NotImplementedError):  # pragma: no cover - other torch builds
        return _signed_pair_sum_loop(weights, xb)


class _Lean:
    """Pure-PyTorch kernels (same roles as the Triton / CUDA functions) plus a cache E (B, N, N)."""

    @staticmethod
    def forward(m: torch.Tensor, exclude_self: bool):
        xb = m.to(_acc_dtype(m)).transpose(0, 1).contiguous()  # (B, N, C)
        e = torch.cdist(xb, xb, p=1.0)  # (B, N, N), exact zeros on the diagonal for p=1
        e.neg_().exp_()
        if exclude_self:
            e.diagonal(dim1=1, dim2=2).zero_()  # harmless for the backward: s[i,i] = 0
        o = e.sum(dim=-1).t().contiguous().to(m.dtype)
        return o, e

    @staticmethod
    def backward(g: torch.Tensor, m: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        xb = m.to(e.dtype).transpose(0, 1).contiguous()
        gb = g.to(e.dtype).t().contiguous()  # (B, N)
        weights = (gb.unsqueeze(2) + gb.unsqueeze(1)).mul_(e)
        dm = _signed_pair_sum(weights, xb)  # (B, N, C)
        return dm.neg_().transpose(0, 1).contiguous().to(m.dtype)

    @staticmethod
    def double_backward(u: torch.Tensor, g: torch.Tensor, m: torch.Tensor, e: torch.Tensor):
        xb = m.to(e.dtype).transpose(0, 1).contiguous()
        ub = u.to(e.dtype).transpose(0, 1).contiguous()
        gb = g.to(e.dtype).t().contiguous()
        w = torch.zeros_like(e)
        s = torch.empty_like(e)
        t = torch.empty_like(e)
        for c in range(xb.shape[-1]):
            xc, uc = xb[:, :, c], ub[:, :, c]
            torch.sub(xc.unsqueeze(2), xc.unsqueeze(1), out=s).sign_()
            torch.sub(uc.unsqueeze(2), uc.unsqueeze(1), out=t)
            w.addcmul_(s, t)
        del s, t
        ew = w.mul_(e)
        grad_g = ew.sum(dim=-1).neg_().t().contiguous().to(g.dtype)
        v = ew.mul_(gb.unsqueeze(2) + gb.unsqueeze(1))
        grad_m = _signed_pair_sum(v, xb).transpose(0, 1).contiguous().to(m.dtype)
        return grad_m, grad_g


# ----------------------------------------------------------------------------- autograd


def _kernels(backend: str):
    return None if backend == "lean" else _backend.kernels(backend, OP)


class _MinibatchDiscriminationFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, m, exclude_self, backend):
        if backend == "lean":
            o, cache = _Lean.forward(m, exclude_self)
        else:
            o, cache = _kernels(backend).mbd_forward(m, exclude_self), None
        ctx.save_for_backward(m)
        ctx.backend = backend
        ctx.cache = cache
        return o

    @staticmethod
    def backward(ctx, g):
        (m,) = ctx.saved_tensors
        # through the differentiable Function only when the backward builds a graph (create_graph=True)
        if torch.is_grad_enabled():
            return _MinibatchDiscriminationBackwardFn.apply(g, m, ctx.backend, ctx.cache), None, None
        return _backward(g.contiguous(), m, ctx.backend, ctx.cache), None, None


def _backward(g, m, backend, cache):
    """dM for the gradient g (contiguous) of the output."""
    if backend == "lean":
        return _Lean.backward(g, m, cache)
    return _kernels(backend).mbd_backward(g, m)


class _MinibatchDiscriminationBackwardFn(torch.autograd.Function):
    """(g, m) -> dM; differentiable once more (the double backward)."""

    @staticmethod
    def forward(ctx, g, m, backend, cache):
        g = g.contiguous()
        dm = _backward(g, m, backend, cache)
        ctx.save_for_backward(g, m)
        ctx.backend = backend
        ctx.cache = cache
        return dm

    @staticmethod
    def backward(ctx, u):
        g, m = ctx.saved_tensors
        if u is None:
            return None, None, None, None
        args = (u.to(m.dtype).contiguous(), g, m)
        if ctx.backend == "lean":
            args = args + (ctx.cache,)
        grad_m, grad_g = last_derivative(functools.partial(_double_backward, ctx.backend), *args)
        return (grad_g if ctx.needs_input_grad[0] else None,
                grad_m if ctx.needs_input_grad[1] else None, None, None)


def _double_backward(backend, u, g, m, cache=None):
    """(grad wrt m, grad wrt g) for the gradient u of dM."""
    if backend == "lean":
        return _Lean.double_backward(u, g, m, cache)
    return _kernels(backend).mbd_double_backward(u, g, m)


# ----------------------------------------------------------------------------- entry point


def _check(m, exclude_self) -> None:
    check_tensor("m", m, min_dim=0)  # a floating tensor
    if m.dim() != 3:
        raise ValueError("m must have 3 dimensions (N, B, C) = (batch, num_kernels, kernel_dim), "
                         f"got shape {tuple(m.shape)}")
    if not isinstance(exclude_self, bool):
        raise TypeError(f"exclude_self must be a bool, got {type(exclude_self).__name__}")


def _choose_backend(impl, m: torch.Tensor) -> str:
    """The backend that runs: "ref" | "lean" | "triton" | "cuda"."""
    requested = _backend.requested_impl(impl)
    backend = _backend.resolve(impl, m.device, OP)
    if backend == "ref" and requested == "auto" and m.device.type == "cpu":
        return "lean"  # the explicit impl="ref" stays the materialising ground truth
    return backend


def minibatch_discrimination(m: torch.Tensor, exclude_self: bool = False, impl: str = "auto") -> torch.Tensor:
    """Minibatch features ``o[i, b] = sum_j exp(-sum_c |m[i,b,c] - m[j,b,c]|)``.

    m is (N, B, C): N examples, B kernels of C dimensions each (float32,
    float16, bfloat16 or float64; sums in float32, float64 for float64).
    With ``exclude_self=True`` the j = i term (exactly 1) is dropped.
    Returns o of shape (N, B) in m's dtype.  The fused backends never build
    the N x N x B x C tensor; differentiable twice (gradient penalties).
    """
    _check(m, exclude_self)
    backend = _choose_backend(impl, m)
    if backend == "ref" or m.numel() == 0:
        return reference.minibatch_discrimination(m, exclude_self)
    return _MinibatchDiscriminationFn.apply(m, exclude_self, backend)
