"""Triton kernels of the gradient penalties (the math: ``fastgan/reference/penalty.py``).

Every big tensor of a call is N samples of K = numel / N elements each, and
sample n is the dense block [n * K, (n + 1) * K) of memory: contiguous or
channels-last tensors (``fastgan.ops._layout.kernel_layout``), with every
companion tensor in exactly the strides of the first.  The order of the
elements inside a block does not matter to any pass here, so the kernels
index memory flatly: element i belongs to sample i // K.

Passes:

* ``penalty_interpolate``: out = eps_n * real + (1 - eps_n) * fake (one read
  of each input, one write), and its backward (d_real = eps_n * grad,
  d_fake = (1 - eps_n) * grad, each only when needed);
* per-sample reductions over a [ROWS, BLOCK_K] tile walk: P programs per
  group of rows write partial sums, merged in a fixed order (deterministic):
  sum g^2 for the norms, sum grad * (real - fake) for d eps;
* ``penalty_forward``: one read of g, then a one-program finalize that turns
  the partials into the (N,) norms and the scalar mean_i f(||g_i||);
* ``penalty_backward``: dg = go * f'(||g_n||) / (N ||g_n||) * g (one read of
  g, one write), 0 where ||g_n|| = 0.

Accumulation is float32 (float64 for float64 inputs): the accumulator type
comes from a per-sample vector's pointer.  Float scalars that must be exact
in float64 (``center``) travel as 1-element tensors.

The public functions have the same names and signatures as the CUDA ops
``torch.ops.fastgan.penalty_*`` registered from ``csrc/penalty.cpp``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._sizes import cdiv, next_power_of_2
from ._target import multiprocessors

MODE_TWO_SIDED, MODE_ONE_SIDED, MODE_SQUARED = 0, 1, 2
FINALIZE_ROW_SUMS = -1  # finalize without a penalty: write the per-sample sums

# tl.sqrt_rn (correctly rounded, float32 only) where this Triton has it; else tl.sqrt.
_HAS_SQRT_RN = hasattr(tl, "sqrt_rn")
_ELEMENTWISE_BLOCK = 1024
_ROW_BLOCK = 2048  # elements of a reduction tile
_MAX_PARTIALS = 1024


@triton.jit
def _interp_kernel(real_ptr, fake_ptr, eps_ptr, out_ptr, numel, K,
                   BLOCK: tl.constexpr, INDEX_64: tl.constexpr):
    pid = tl.program_id(0)
    if INDEX_64:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    acc_ty = eps_ptr.dtype.element_ty
    e = tl.load(eps_ptr + offs // K, mask=mask, other=0.0)
    r = tl.load(real_ptr + offs, mask=mask, other=0.0).to(acc_ty)
    f = tl.load(fake_ptr + offs, mask=mask, other=0.0).to(acc_ty)
    out = e * r + (1.0 - e) * f
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _interp_backward_kernel(grad_ptr, eps_ptr, dreal_ptr, dfake_ptr, numel, K,
                            BLOCK: tl.constexpr, INDEX_64: tl.constexpr,
                            NEED_REAL: tl.constexpr, NEED_FAKE: tl.constexpr):
    pid = tl.program_id(0)
    if INDEX_64:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    acc_ty = eps_ptr.dtype.element_ty
    e = tl.load(eps_ptr + offs // K, mask=mask, other=0.0)
    g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(acc_ty)
    if NEED_REAL:
        tl.store(dreal_ptr + offs, (e * g).to(dreal_ptr.dtype.element_ty), mask=mask)
    if NEED_FAKE:
        tl.store(dfake_ptr + offs, ((1.0 - e) * g).to(dfake_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _row_partials_kernel(a_ptr, b_ptr, c_ptr, out_ptr, N, K, num_chunks, P,
                         ROWS: tl.constexpr, BLOCK_K: tl.constexpr, INDEX_64: tl.constexpr,
                         DOT_DIFF: tl.constexpr):
    """out[n, p] = sum over the chunks t = p, p + P, ... of row n of a*a (or a*(b - c))."""
    pid_r = tl.program_id(0)
    pid_p = tl.program_id(1)
    acc_ty = out_ptr.dtype.element_ty
    rows = pid_r * ROWS + tl.arange(0, ROWS)
    if INDEX_64:
        rows = rows.to(tl.int64)
    rmask = rows < N
    acc = tl.zeros([ROWS, BLOCK_K], acc_ty)
    for t in range(pid_p, num_chunks, P):
        cols = t * BLOCK_K + tl.arange(0, BLOCK_K)
        if INDEX_64:
            cols = cols.to(tl.int64)
        offs = (rows * K)[:, None] + cols[None, :]
        mask = rmask[:, None] & (cols < K)[None, :]
        a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        if DOT_DIFF:
            b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(acc_ty)
            c = tl.load(c_ptr + offs, mask=mask, other=0.0).to(acc_ty)
            acc += a * (b - c)
        else:
            acc += a * a
    tl.store(out_ptr + rows * P + pid_p, tl.sum(acc, axis=1), mask=rmask)


@triton.jit
def _finalize_kernel(parts_ptr, rows_ptr, value_ptr, center_ptr, N, P,
                     BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, MODE: tl.constexpr, SQRT_RN: tl.constexpr):
    """One program: row sums s_n = sum_p parts[n, p] (fixed order).  MODE < 0: rows = s;
    else rows = sqrt(s) (the norms) and value = mean_n f(norm_n)."""
    acc_ty = parts_ptr.dtype.element_ty
    center = tl.load(center_ptr)
    total = tl.zeros([BLOCK_N], acc_ty)
    p = tl.arange(0, BLOCK_P)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nmask = n < N
        parts = tl.load(parts_ptr + n[:, None] * P + p[None, :], mask=nmask[:, None] & (p < P)[None, :],
                        other=0.0)
        s = tl.sum(parts, axis=1)
        if MODE < 0:
            tl.store(rows_ptr + n, s, mask=nmask)
        else:
            if SQRT_RN and acc_ty != tl.float64:
                norm = tl.sqrt_rn(s)  # correctly rounded, as torch's
            else:
                norm = tl.sqrt(s)
            tl.store(rows_ptr + n, norm, mask=nmask)
            if MODE == 0:
                d = norm - center
                f = d * d
            elif MODE == 1:
                d = tl.maximum(norm - center, 0.0)
                f = d * d
            else:
                f = s
            total += tl.where(nmask, f, 0.0)
    if MODE >= 0:
        tl.store(value_ptr, tl.sum(total, axis=0) / N)


@triton.jit
def _penalty_backward_kernel(g_ptr, norm_ptr, go_ptr, center_ptr, dg_ptr, numel, K, N,
                             BLOCK: tl.constexpr, INDEX_64: tl.constexpr, MODE: tl.constexpr):
    """dg = go / N * f'(norm_n) / norm_n * g; the coefficient is 0 where norm_n == 0."""
    pid = tl.program_id(0)
    if INDEX_64:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    acc_ty = norm_ptr.dtype.element_ty
    go = tl.load(go_ptr).to(acc_ty)
    scale = 2.0 * go / N
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(acc_ty)
    if MODE == 2:
        coef = scale
    else:
        center = tl.load(center_ptr)
        norm = tl.load(norm_ptr + offs // K, mask=mask, other=0.0)
        safe = tl.where(norm > 0, norm, 1.0)
        if MODE == 0:
            d = norm - center
        else:
            d = tl.maximum(norm - center, 0.0)
        coef = tl.where(norm > 0, scale * d / safe, 0.0)
    tl.store(dg_ptr + offs, (coef * g).to(dg_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launch helpers


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _sizes(t: torch.Tensor) -> tuple[int, int]:
    n = t.shape[0]
    return n, (t.numel() // n if n else 0)


def _index_64(t: torch.Tensor) -> bool:
    return t.numel() >= 2**31 - 1


def _elementwise_grid(numel: int):
    return (cdiv(numel, _ELEMENTWISE_BLOCK),)


def _scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    return torch.full((1,), value, dtype=like.dtype, device=like.device)


def _row_partials(a, b, c, dot_diff: bool) -> torch.Tensor:
    """(N, P) partial sums per sample (a*a or a*(b - c)), acc dtype."""
    n, k = _sizes(a)
    block_k = min(_ROW_BLOCK, next_power_of_2(max(k, 1)))
    rows = max(1, _ROW_BLOCK // block_k)
    rows = min(rows, next_power_of_2(n))
    num_chunks = cdiv(k, block_k)
    row_groups = cdiv(n, rows)
    sms = multiprocessors(a)
    if sms is not None:
        target = 4 * sms
    else:  # interpreter: few programs, more than one so the merge is exercised
        target = 2 * row_groups
    partials = max(1, min(num_chunks, cdiv(target, row_groups), _MAX_PARTIALS))
    parts = torch.empty((n, partials), device=a.device, dtype=_acc_dtype(a))
    _row_partials_kernel[(row_groups, partials)](
        a, a if b is None else b, a if c is None else c, parts, n, k, num_chunks, partials,
        ROWS=rows, BLOCK_K=block_k, INDEX_64=_index_64(a), DOT_DIFF=dot_diff,
        num_warps=4 if rows * block_k <= 1024 else 8)
    return parts


def _finalize(parts: torch.Tensor, mode: int, center: float):
    n, p = parts.shape
    rows = torch.empty(n, device=parts.device, dtype=parts.dtype)
    value = torch.empty((), device=parts.device, dtype=parts.dtype)
    block_p = next_power_of_2(p)
    block_n = max(1, min(next_power_of_2(n), 4096 // block_p))
    _finalize_kernel[(1,)](parts, rows, value, _scalar(center, parts), n, p,
                           BLOCK_N=block_n, BLOCK_P=block_p, MODE=mode, SQRT_RN=_HAS_SQRT_RN)
    return rows, value


# ----------------------------------------------------------------------------- public functions


def penalty_interpolate(real: torch.Tensor, fake: torch.Tensor, epsilon: torch.Tensor) -> torch.Tensor:
    """eps_n * real + (1 - eps_n) * fake, real's dtype and strides; epsilon (N,) in the acc dtype."""
    out = torch.empty_like(real)
    n, k = _sizes(real)
    if real.numel():
        _interp_kernel[_elementwise_grid(real.numel())](real, fake, epsilon, out, real.numel(), k,
                                                        BLOCK=_ELEMENTWISE_BLOCK, INDEX_64=_index_64(real))
    return out


def penalty_interpolate_backward(grad: torch.Tensor, epsilon: torch.Tensor, need_real: bool,
                                 need_fake: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps_n * grad, (1 - eps_n) * grad); an output not needed is an empty (0,) tensor."""
    d_real = torch.empty_like(grad) if need_real else grad.new_empty((0,))
    d_fake = torch.empty_like(grad) if need_fake else grad.new_empty((0,))
    n, k = _sizes(grad)
    if grad.numel() and (need_real or need_fake):
        _interp_backward_kernel[_elementwise_grid(grad.numel())](
            grad, epsilon, d_real if need_real else grad, d_fake if need_fake else grad, grad.numel(), k,
            BLOCK=_ELEMENTWISE_BLOCK, INDEX_64=_index_64(grad), NEED_REAL=bool(need_real),
            NEED_FAKE=bool(need_fake))
    return d_real, d_fake


def penalty_epsilon_grad(grad: torch.Tensor, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """(N,) sum over each sample of grad * (real - fake), acc dtype: the gradient wrt epsilon."""
    n, k = _sizes(grad)
    if k == 0:
        return torch.zeros(n, device=grad.device, dtype=_acc_dtype(grad))
    rows, _ = _finalize(_row_partials(grad, real, fake, True), FINALIZE_ROW_SUMS, 0.0)
    return rows


def penalty_forward(grad: torch.Tensor, mode: int, center: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(value, norms): norms (N,) = per-sample L2 norms of grad; value (0-dim) = mean_n f(norms_n)
    (mode 0: (norm - center)^2, 1: max(norm - center, 0)^2, 2: norm^2); acc dtype."""
    n, k = _sizes(grad)
    if k == 0:
        parts = torch.zeros((n, 1), device=grad.device, dtype=_acc_dtype(grad))
    else:
        parts = _row_partials(grad, None, None, False)
    norms, value = _finalize(parts, int(mode), float(center))
    return value, norms


def penalty_backward(grad_value: torch.Tensor, grad: torch.Tensor, norms: torch.Tensor, mode: int,
                     center: float) -> torch.Tensor:
    """d value / d grad times grad_value (0-dim): coef_n * grad, grad's dtype and strides."""
    dg = torch.empty_like(grad)
    n, k = _sizes(grad)
    if grad.numel():
        _penalty_backward_kernel[_elementwise_grid(grad.numel())](
            grad, norms, grad_value, _scalar(center, norms), dg, grad.numel(), k, n,
            BLOCK=_ELEMENTWISE_BLOCK, INDEX_64=_index_64(grad), MODE=int(mode))
    return dg
