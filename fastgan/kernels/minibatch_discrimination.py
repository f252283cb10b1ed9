"""Triton kernels of minibatch discrimination: pairwise L1 similarity sums.

For M (N, B, C), d[i, j, b] = sum_c |M[i,b,c] - M[j,b,c]|, E = exp(-d),
s[i, j, b, c] = sign(M[i,b,c] - M[j,b,c]) (antisymmetric in i, j)::

    forward          o[i,b]   = sum_j E[i,j,b]                 (j != i if exclude_self)
    backward         dM[i,b,c] = -sum_j (g[i,b] + g[j,b]) E[i,j,b] s[i,j,b,c]
    double backward  w[i,j,b] = sum_c (u[i,b,c] - u[j,b,c]) s[i,j,b,c]
                     grad_g[i,b]   = -sum_j E[i,j,b] w[i,j,b]
                     grad_M[i,b,c] =  sum_j (g[i,b] + g[j,b]) E[i,j,b] w[i,j,b] s[i,j,b,c]

(u is the incoming gradient of dM; s is piecewise constant, so only E is
differentiated again.  The j = i terms vanish in every derivative since
s[i,i] = 0, which is why ``exclude_self`` only changes the forward.)

One program owns the rows i of an i-block for one kernel b and walks over
all j-blocks: the [BLOCK_I, BLOCK_J] tile of distances is accumulated over
c in registers from two length-BLOCK vectors per c, so nothing bigger than
a tile is ever built (memory O(N*B*C)).  Each program writes only its own
rows, reductions run in a fixed order: results are deterministic.  The
per-c gradient sums go to a [BLOCK_I, BLOCK_C] register accumulator.

M (and u) are read from a (B, C, N) copy so that the j-vectors are
contiguous; outputs are written straight into the (N, B[, C]) layout.
Accumulation is float32 (float64 for float64 M): the accumulator type comes
from the g / output-buffer pointer's element type.

The public functions here have the same names and signatures as the CUDA
ops ``torch.ops.fastgan.mbd_*`` registered from ``csrc/minibatch_discrimination.cpp``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._sizes import cdiv, next_power_of_2
from ._target import multiprocessors

__all__ = ["mbd_forward", "mbd_backward", "mbd_double_backward"]


@triton.jit
def _sign(x):
    return tl.where(x > 0, 1.0, 0.0) - tl.where(x < 0, 1.0, 0.0)


@triton.jit
def _mbd_forward_kernel(mt_ptr, o_ptr, N, B, C,
                        EXCLUDE_SELF: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    b = tl.program_id(0)
    acc_ty = o_ptr.dtype.element_ty
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    imask = i < N
    base = b.to(tl.int64) * C * N
    acc = tl.zeros([BLOCK_I], acc_ty)
    for j0 in range(0, N, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        jmask = j < N
        d = tl.zeros([BLOCK_I, BLOCK_J], acc_ty)
        for c in range(C):
            xi = tl.load(mt_ptr + base + c * N + i, mask=imask, other=0.0).to(acc_ty)
            xj = tl.load(mt_ptr + base + c * N + j, mask=jmask, other=0.0).to(acc_ty)
            d += tl.abs(xi[:, None] - xj[None, :])
        valid = jmask[None, :]
        if EXCLUDE_SELF:
            valid = valid & (i[:, None] != j[None, :])
        acc += tl.sum(tl.where(valid, tl.exp(-d), 0.0), axis=1)
    tl.store(o_ptr + i.to(tl.int64) * B + b, acc, mask=imask)


@triton.jit
def _mbd_grad_kernel(mt_ptr, ut_ptr, gt_ptr, out_m_ptr, out_g_ptr, N, B, C,
                     DOUBLE: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr,
                     BLOCK_C: tl.constexpr):
    """DOUBLE=False: out_m = dM.   DOUBLE=True: out_m = grad_M, out_g = grad_g."""
    b = tl.program_id(0)
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    imask = i < N
    base = b.to(tl.int64) * C * N
    gi = tl.load(gt_ptr + b.to(tl.int64) * N + i, mask=imask, other=0.0)
    acc_ty = gi.dtype
    cols = tl.arange(0, BLOCK_C)
    acc = tl.zeros([BLOCK_I, BLOCK_C], acc_ty)
    acc_g = tl.zeros([BLOCK_I], acc_ty)
    for j0 in range(0, N, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        jmask = j < N
        gj = tl.load(gt_ptr + b.to(tl.int64) * N + j, mask=jmask, other=0.0)
        d = tl.zeros([BLOCK_I, BLOCK_J], acc_ty)
        w = tl.zeros([BLOCK_I, BLOCK_J], acc_ty)
        for c in range(C):
            xi = tl.load(mt_ptr + base + c * N + i, mask=imask, other=0.0).to(acc_ty)
            xj = tl.load(mt_ptr + base + c * N + j, mask=jmask, other=0.0).to(acc_ty)
            diff = xi[:, None] - xj[None, :]
            d += tl.abs(diff)
            if DOUBLE:
                ui = tl.load(ut_ptr + base + c * N + i, mask=imask, other=0.0).to(acc_ty)
                uj = tl.load(ut_ptr + base + c * N + j, mask=jmask, other=0.0).to(acc_ty)
                w += (ui[:, None] - uj[None, :]) * _sign(diff)
        e = tl.where(jmask[None, :], tl.exp(-d), 0.0)
        if DOUBLE:
            ew = e * w
            acc_g += tl.sum(ew, axis=1)
            v = (gi[:, None] + gj[None, :]) * ew
        else:
            v = (gi[:, None] + gj[None, :]) * e
        for c in range(C):
            xi = tl.load(mt_ptr + base + c * N + i, mask=imask, other=0.0).to(acc_ty)
            xj = tl.load(mt_ptr + base + c * N + j, mask=jmask, other=0.0).to(acc_ty)
            part = tl.sum(v * _sign(xi[:, None] - xj[None, :]), axis=1)
            acc += tl.where(cols[None, :] == c, part[:, None], 0.0)
    if not DOUBLE:
        acc = -acc
    offs = (i.to(tl.int64) * B * C + b * C)[:, None] + cols[None, :]
    omask = imask[:, None] & (cols < C)[None, :]
    tl.store(out_m_ptr + offs, acc.to(out_m_ptr.dtype.element_ty), mask=omask)
    if DOUBLE:
        tl.store(out_g_ptr + i.to(tl.int64) * B + b, -acc_g, mask=imask)


# ----------------------------------------------------------------------------- launch helpers


def _acc_dtype(m: torch.Tensor) -> torch.dtype:
    return torch.float64 if m.dtype == torch.float64 else torch.float32


def _blocks(n: int, m: torch.Tensor, double: bool = False):
    """(BLOCK_I, BLOCK_J, num_warps): tiles of the pair matrix (``double``: for the double backward,
    which keeps two more pair tiles live)."""
    if multiprocessors(m) is None:  # interpreter: the cost is per program and loop step, numpy does the tile
        blk = 16 if n <= 64 else min(256, next_power_of_2(n))
        return blk, blk, 4
    block_j = 64 if n >= 64 else max(16, next_power_of_2(n))
    block_i = 32 if n <= 256 else 64  # small N: more programs to fill the SMs
    if double and block_i == 64:
        block_j = min(block_j, 32)  # 64 x 64 double-backward tiles spill on sm_80 even on 8 warps (compile_check)
    # 64 x 64 pair tiles on 4 warps spill registers in the gradient kernel (compile_check, sm_90): use 8
    return block_i, block_j, 8 if block_i * block_j >= 4096 else 4


def _bcn(t: torch.Tensor) -> torch.Tensor:
    """(N, B, C) -> contiguous (B, C, N)."""
    return t.permute(1, 2, 0).contiguous()


def mbd_forward(m: torch.Tensor, exclude_self: bool) -> torch.Tensor:
    """o (N, B) in m's dtype."""
    n, b, c = m.shape
    acc = _acc_dtype(m)
    o = torch.empty((n, b), device=m.device, dtype=acc)
    block_i, block_j, warps = _blocks(n, m)
    _mbd_forward_kernel[(b, cdiv(n, block_i))](_bcn(m), o, n, b, c, EXCLUDE_SELF=bool(exclude_self),
                                                      BLOCK_I=block_i, BLOCK_J=block_j, num_warps=warps)
    return o.to(m.dtype)


def mbd_backward(g: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """dM (N, B, C) in m's dtype, for the gradient g (N, B) of o."""
    n, b, c = m.shape
    gt = g.to(_acc_dtype(m)).t().contiguous()
    dm = torch.empty((n, b, c), device=m.device, dtype=m.dtype)
    block_i, block_j, warps = _blocks(n, m)
    mt = _bcn(m)
    _mbd_grad_kernel[(b, cdiv(n, block_i))](mt, mt, gt, dm, gt, n, b, c, DOUBLE=False,
                                                   BLOCK_I=block_i, BLOCK_J=block_j,
                                                   BLOCK_C=next_power_of_2(c), num_warps=warps)
    return dm


def mbd_double_backward(u: torch.Tensor, g: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_M (N, B, C) in m's dtype, grad_g (N, B) in g's dtype) for the gradient u of dM."""
    n, b, c = m.shape
    acc = _acc_dtype(m)
    gt = g.to(acc).t().contiguous()
    grad_m = torch.empty((n, b, c), device=m.device, dtype=m.dtype)
    grad_g = torch.empty((n, b), device=m.device, dtype=acc)
    block_i, block_j, warps = _blocks(n, m, double=True)
    _mbd_grad_kernel[(b, cdiv(n, block_i))](_bcn(m), _bcn(u), gt, grad_m, grad_g, n, b, c,
                                                   DOUBLE=True, BLOCK_I=block_i, BLOCK_J=block_j,
                                                   BLOCK_C=next_power_of_2(c), num_warps=warps)
    return grad_m, grad_g.to(g.dtype)
