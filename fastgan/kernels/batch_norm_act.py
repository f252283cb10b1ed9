"""Triton kernels of the per-channel normalization + activation family.

Every big tensor of a call is viewed as (N, C, S) with the strides of x
(``fastgan.ops._layout``); a channel's M = N * S elements are indexed by
m = n * S + s.  Programs work on [BLOCK_C, BLOCK_M] tiles: channels-last
inputs tile along C (contiguous), NC* inputs along m.

One index map serves the whole normalization family.  The per-channel
vectors (scale, shift, mean, invstd, coefficients) are either (C,) -- batch
norm: statistics per channel over all N * S positions -- or (N, C) tables --
group / instance / layer norm: statistics per sample.  In the per-sample
case every program stays inside one sample's segment of m (grid axis 2 is
n), reads row n of the tables and writes per-(n, c) reductions; the caller
merges those rows into group statistics (``fastgan.ops.group_norm_act``).

Two kernel shapes serve every pass:

* reductions over m per channel, written as [P, C] partials by P programs
  per channel block and merged in a fixed order (deterministic): the
  statistics (Welford within a tile, Chan merging across tiles and across
  programs) and the gradient sums of the backward and double backward;
* one elementwise map whose per-channel coefficients are computed by the
  caller (``fastgan.ops.batch_norm_act``): forward, backward, double
  backward.

The mask of the activation is recomputed from x (z = x * scale + shift),
never stored.  Accumulation is float32 (float64 for float64 inputs): the
accumulator type is taken from the per-channel vectors' pointer type.

The public functions here have the same names and signatures as the CUDA
ops ``torch.ops.fastgan.*`` registered from ``csrc/batch_norm_act.cpp``.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..ops._layout import strides_ncs
from . import _target
from ._sizes import cdiv, next_power_of_2
from ._target import multiprocessors
from .backward_coefficients import norm_act_backward_coefficients  # noqa: F401 - reached through this module
from .double_coefficients import norm_act_double_coefficients  # noqa: F401 - reached through this module
from .stats_affine import group_stats_affine  # noqa: F401 - reached through this module
from .stats_affine import HAS_SQRT_RN, stats_affine, write_affine

MODE_FORWARD, MODE_BACKWARD, MODE_DOUBLE = 0, 1, 2


@triton.jit
def _tile(m_start, m_end, c_start, C, S, s_n, s_c, s_s,
          BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, INDEX_64: tl.constexpr):
    """Offsets and mask of the [BLOCK_C, BLOCK_M] tile at (c_start, m_start), m < m_end."""
    m = m_start + tl.arange(0, BLOCK_M)
    c = c_start + tl.arange(0, BLOCK_C)
    if INDEX_64:
        m = m.to(tl.int64)
        c = c.to(tl.int64)
    n_idx = m // S
    s_idx = m - n_idx * S
    offs = (c * s_c)[:, None] + (n_idx * s_n + s_idx * s_s)[None, :]
    mask = (c < C)[:, None] & (m < m_end)[None, :]
    return offs, mask, c


@triton.jit
def _y_offsets(offs, m_start, c_start, C, S, W, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
               INDEX_64: tl.constexpr, UPSCALE: tl.constexpr):
    """Offsets of the same elements in y = pixel_shuffle(x, UPSCALE) (both contiguous NCHW).

    x[n, c, h, w] with c = co * R^2 + i * R + j lands at y[n, co, h * R + i, w * R + j]."""
    if UPSCALE == 1:
        return offs
    m = m_start + tl.arange(0, BLOCK_M)
    c = c_start + tl.arange(0, BLOCK_C)
    if INDEX_64:
        m = m.to(tl.int64)
        c = c.to(tl.int64)
    n_idx = m // S
    s_idx = m - n_idx * S
    h = s_idx // W
    w = s_idx - h * W
    wy = W * UPSCALE
    co = c // (UPSCALE * UPSCALE)
    sub = c - co * (UPSCALE * UPSCALE)
    i = sub // UPSCALE
    j = sub - i * UPSCALE
    return (co * S * UPSCALE * UPSCALE + i * wy + j)[:, None] + (n_idx * C * S + h * UPSCALE * wy + w * UPSCALE)[None, :]


@triton.jit
def _welford_tiles(x_ptr, acc_ptr, pid_c, pid_p, pid_seg, seg_len, C, S, s_n, s_c, s_s, num_tiles, P,
                   BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, INDEX_64: tl.constexpr):
    """(count, mean, M2) of channel block pid_c over the tiles t = pid_p, pid_p + P, ... of segment pid_seg,
    in the dtype of ``acc_ptr``'s elements."""
    m_base = pid_seg * seg_len
    m_end = m_base + seg_len
    acc_ty = acc_ptr.dtype.element_ty
    run_n = tl.zeros([BLOCK_C], acc_ty)
    run_mean = tl.zeros([BLOCK_C], acc_ty)
    run_m2 = tl.zeros([BLOCK_C], acc_ty)
    for t in range(pid_p, num_tiles, P):
        offs, mask, _ = _tile(m_base + t * BLOCK_M, m_end, pid_c * BLOCK_C, C, S, s_n, s_c, s_s,
                              BLOCK_M, BLOCK_C, INDEX_64)
        v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        cnt = tl.minimum(seg_len - t * BLOCK_M, BLOCK_M).to(acc_ty)
        tile_mean = tl.sum(v, axis=1) / cnt
        d = tl.where(mask, v - tile_mean[:, None], 0.0)
        tile_m2 = tl.sum(d * d, axis=1)
        # Chan et al.: merge (run_n, run_mean, run_m2) with the tile's moments.
        new_n = run_n + cnt
        delta = tile_mean - run_mean
        run_mean = run_mean + delta * (cnt / new_n)
        run_m2 = run_m2 + tile_m2 + delta * delta * (run_n * cnt / new_n)
        run_n = new_n
    return run_n, run_mean, run_m2


@triton.jit
def _stats_partial_kernel(x_ptr, cnt_ptr, mean_ptr, m2_ptr, seg_len, C, S, s_n, s_c, s_s, num_tiles, P,
                          BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, INDEX_64: tl.constexpr):
    """(count, mean, M2) of the tiles t = pid_p, pid_p + P, ... of segment pid_seg."""
    pid_c = tl.program_id(0)
    pid_p = tl.program_id(1)
    pid_seg = tl.program_id(2)
    run_n, run_mean, run_m2 = _welford_tiles(x_ptr, mean_ptr, pid_c, pid_p, pid_seg, seg_len, C, S, s_n, s_c, s_s,
                                             num_tiles, P, BLOCK_M, BLOCK_C, INDEX_64)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    out = (pid_seg * P + pid_p) * C + c
    tl.store(cnt_ptr + out, run_n, mask=cmask)
    tl.store(mean_ptr + out, run_mean, mask=cmask)
    tl.store(m2_ptr + out, run_m2, mask=cmask)


@triton.jit
def _stats_single_pass_kernel(x_ptr, out_mean_ptr, out_var_ptr, seg_len, C, S, s_n, s_c, s_s, num_tiles,
                              w_ptr, b_ptr, rm_ptr, rv_ptr, invstd_ptr, scale_ptr, shift_ptr, eps, momentum, unbias,
                              BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, INDEX_64: tl.constexpr,
                              VARIANCE: tl.constexpr, AFFINE: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                              HAS_BIAS: tl.constexpr, HAS_RUNNING: tl.constexpr, SQRT_RN: tl.constexpr):
    """When one program per (channel block, segment) fills the GPU (P = 1: every per-sample layer, batch norm
    over many channels), it sees all of its segment and writes what ``_stats_finalize_kernel`` would: one
    launch instead of two."""
    pid_c = tl.program_id(0)
    seg = tl.program_id(2).to(tl.int64)
    run_n, mean, second = _welford_tiles(x_ptr, out_mean_ptr, pid_c, 0, tl.program_id(2), seg_len, C, S, s_n, s_c,
                                         s_s, num_tiles, 1, BLOCK_M, BLOCK_C, INDEX_64)
    if VARIANCE:
        second = second / tl.maximum(run_n, 1.0)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    tl.store(out_mean_ptr + seg * C + c, mean, mask=cmask)
    tl.store(out_var_ptr + seg * C + c, second, mask=cmask)
    if AFFINE:
        write_affine(mean, second, c, cmask, w_ptr, b_ptr, rm_ptr, rv_ptr, invstd_ptr, scale_ptr, shift_ptr, eps,
                     momentum, unbias, HAS_WEIGHT, HAS_BIAS, HAS_RUNNING, SQRT_RN, c)


@triton.jit
def _stats_finalize_kernel(cnt_ptr, mean_ptr, m2_ptr, out_mean_ptr, out_var_ptr, C, P,
                           w_ptr, b_ptr, rm_ptr, rv_ptr, invstd_ptr, scale_ptr, shift_ptr, eps, momentum, unbias,
                           BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, VARIANCE: tl.constexpr,
                           AFFINE: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                           HAS_RUNNING: tl.constexpr, SQRT_RN: tl.constexpr):
    """Chan's parallel merge of the P partial (count, mean, M2) of each channel of segment
    program_id(1) (partials (T, P, C), results (T, C)): the mean and the biased variance
    (VARIANCE) or M2.  With AFFINE (channel_stats_affine, one segment) also stats_affine's
    outputs and running-stat update, in the same launch."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    seg = tl.program_id(1).to(tl.int64)
    p = tl.arange(0, BLOCK_P)
    mask = (p < P)[:, None] & (c < C)[None, :]
    idx = seg * P * C + p[:, None] * C + c[None, :]
    cnt = tl.load(cnt_ptr + idx, mask=mask, other=0.0)
    mu = tl.load(mean_ptr + idx, mask=mask, other=0.0)
    m2 = tl.load(m2_ptr + idx, mask=mask, other=0.0)
    total = tl.maximum(tl.sum(cnt, axis=0), 1.0)  # masked channels: avoid 0/0
    mean = tl.sum(cnt * mu, axis=0) / total
    d = tl.where(mask, mu - mean[None, :], 0.0)
    second = tl.sum(m2, axis=0) + tl.sum(cnt * d * d, axis=0)
    if VARIANCE:
        second = second / total
    cmask = c < C
    tl.store(out_mean_ptr + seg * C + c, mean, mask=cmask)
    tl.store(out_var_ptr + seg * C + c, second, mask=cmask)
    if AFFINE:
        write_affine(mean, second, c, cmask, w_ptr, b_ptr, rm_ptr, rv_ptr, invstd_ptr, scale_ptr, shift_ptr, eps,
                     momentum, unbias, HAS_WEIGHT, HAS_BIAS, HAS_RUNNING, SQRT_RN, c)


@triton.jit
def _grad_sums_kernel(gy_ptr, x_ptr, u_ptr, scale_ptr, shift_ptr, mean_ptr, invstd_ptr, out_ptr,
                      seg_len, tbl_stride, C, S, s_n, s_c, s_s, num_tiles, P, slope_ptr, W,
                      BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, INDEX_64: tl.constexpr,
                      DOUBLE: tl.constexpr, UPSCALE: tl.constexpr):
    """Partial sums of gz, gz*xhat (and u, u*xhat, gz*u when DOUBLE) per channel of a segment."""
    pid_c = tl.program_id(0)
    pid_p = tl.program_id(1)
    pid_seg = tl.program_id(2)
    m_base = pid_seg * seg_len
    m_end = m_base + seg_len
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    row = pid_seg * tbl_stride + c
    scale = tl.load(scale_ptr + row, mask=cmask, other=0.0)
    acc_ty = scale.dtype
    shift = tl.load(shift_ptr + row, mask=cmask, other=0.0)
    mean = tl.load(mean_ptr + row, mask=cmask, other=0.0)
    invstd = tl.load(invstd_ptr + row, mask=cmask, other=0.0)
    slope = tl.load(slope_ptr)  # a tensor, not a float argument: float64 needs it exact
    s_g = tl.zeros([BLOCK_C], acc_ty)
    s_gx = tl.zeros([BLOCK_C], acc_ty)
    s_u = tl.zeros([BLOCK_C], acc_ty)
    s_ux = tl.zeros([BLOCK_C], acc_ty)
    s_gu = tl.zeros([BLOCK_C], acc_ty)
    for t in range(pid_p, num_tiles, P):
        offs, mask, _ = _tile(m_base + t * BLOCK_M, m_end, pid_c * BLOCK_C, C, S, s_n, s_c, s_s,
                              BLOCK_M, BLOCK_C, INDEX_64)  # c not rebound: see _stats_partial_kernel
        offs_y = _y_offsets(offs, m_base + t * BLOCK_M, pid_c * BLOCK_C, C, S, W, BLOCK_M, BLOCK_C, INDEX_64,
                            UPSCALE)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        gy = tl.load(gy_ptr + offs_y, mask=mask, other=0.0).to(acc_ty)
        z = x * scale[:, None] + shift[:, None]
        gz = gy * tl.where(z > 0, 1.0, slope)
        xhat = (x - mean[:, None]) * invstd[:, None]
        s_g += tl.sum(gz, axis=1)
        s_gx += tl.sum(gz * xhat, axis=1)
        if DOUBLE:
            u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(acc_ty)
            s_u += tl.sum(u, axis=1)
            s_ux += tl.sum(u * xhat, axis=1)
            s_gu += tl.sum(gz * u, axis=1)
    stride = tl.num_programs(2) * P * C
    out = (pid_seg * P + pid_p) * C + c
    tl.store(out_ptr + out, s_g, mask=cmask)
    tl.store(out_ptr + stride + out, s_gx, mask=cmask)
    if DOUBLE:
        tl.store(out_ptr + 2 * stride + out, s_u, mask=cmask)
        tl.store(out_ptr + 3 * stride + out, s_ux, mask=cmask)
        tl.store(out_ptr + 4 * stride + out, s_gu, mask=cmask)


@triton.jit
def _pointwise_kernel(x_ptr, gy_ptr, u_ptr, out_ptr, out2_ptr, scale_ptr, shift_ptr, mean_ptr, invstd_ptr,
                      k1_ptr, k2_ptr, k3_ptr, b1_ptr, b2_ptr, b3_ptr, b4_ptr, seg_len, tbl_stride,
                      C, S, s_n, s_c, s_s, slope_ptr,
                      W, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, INDEX_64: tl.constexpr,
                      MODE: tl.constexpr, UPSCALE: tl.constexpr):
    """MODE_FORWARD:  out = act(x * scale + shift)
    MODE_BACKWARD: out = k1 * gz + k2 + k3 * xhat                   (dx)
    MODE_DOUBLE:   out = b1 * gz + b2 * u + b3 + b4 * xhat          (d/dx)
                   out2 = s * (a1 * u + a2 + a3 * xhat)            (d/dgy)
    with coefficients (k1..k3 or a1..a3, b1..b4) each a [T, C] table like scale, T = 1 or N (each its
    own pointer: stacking them into one tensor would cost the host an op and the GPU a launch)."""
    pid_seg = tl.program_id(2)
    m_base = pid_seg * seg_len
    offs, mask, c = _tile(m_base + tl.program_id(0) * BLOCK_M, m_base + seg_len, tl.program_id(1) * BLOCK_C,
                          C, S, s_n, s_c, s_s, BLOCK_M, BLOCK_C, INDEX_64)
    # gy, y and ggy live in y's layout (pixel-shuffled when UPSCALE > 1); x, u, dx, ggx in x's.
    offs_y = _y_offsets(offs, m_base + tl.program_id(0) * BLOCK_M, tl.program_id(1) * BLOCK_C, C, S, W,
                        BLOCK_M, BLOCK_C, INDEX_64, UPSCALE)
    cmask = c < C
    row = pid_seg * tbl_stride + c
    scale = tl.load(scale_ptr + row, mask=cmask, other=0.0)
    acc_ty = scale.dtype
    shift = tl.load(shift_ptr + row, mask=cmask, other=0.0)
    slope = tl.load(slope_ptr)  # a tensor, not a float argument: float64 needs it exact
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty)
    z = x * scale[:, None] + shift[:, None]
    if MODE == 0:
        y = tl.where(z > 0, z, z * slope)
        tl.store(out_ptr + offs_y, y.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        mean = tl.load(mean_ptr + row, mask=cmask, other=0.0)
        invstd = tl.load(invstd_ptr + row, mask=cmask, other=0.0)
        xhat = (x - mean[:, None]) * invstd[:, None]
        s = tl.where(z > 0, 1.0, slope)
        gz = tl.load(gy_ptr + offs_y, mask=mask, other=0.0).to(acc_ty) * s
        k1 = tl.load(k1_ptr + row, mask=cmask, other=0.0)
        k2 = tl.load(k2_ptr + row, mask=cmask, other=0.0)
        k3 = tl.load(k3_ptr + row, mask=cmask, other=0.0)
        if MODE == 1:
            dx = k1[:, None] * gz + k2[:, None] + k3[:, None] * xhat
            tl.store(out_ptr + offs, dx.to(out_ptr.dtype.element_ty), mask=mask)
        else:
            u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(acc_ty)
            b1 = tl.load(b1_ptr + row, mask=cmask, other=0.0)
            b2 = tl.load(b2_ptr + row, mask=cmask, other=0.0)
            b3 = tl.load(b3_ptr + row, mask=cmask, other=0.0)
            b4 = tl.load(b4_ptr + row, mask=cmask, other=0.0)
            ggy = s * (k1[:, None] * u + k2[:, None] + k3[:, None] * xhat)
            ggx = b1[:, None] * gz + b2[:, None] * u + b3[:, None] + b4[:, None] * xhat
            tl.store(out_ptr + offs, ggx.to(out_ptr.dtype.element_ty), mask=mask)
            tl.store(out2_ptr + offs_y, ggy.to(out2_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launch helpers


class _Geometry:
    """How a call tiles x: sizes, strides, block shape, and the segments.

    rows=None: (C,) vectors, one segment of all M = N * S positions (batch norm);
    rows=T:    (T, C) tables, T segments of (N / T) * S positions: per sample with T = N, per segment
               of N / T consecutive samples otherwise (batch statistics of each segment alone).
    """

    def __init__(self, x: torch.Tensor, rows: Optional[int]):
        self.n, self.c, self.s, s_n, s_c, s_s = strides_ncs(x)
        self.strides = (s_n, s_c, s_s)
        self.per_sample = rows is not None  # (T, C) tables
        if self.per_sample and (rows != self.n and (rows < 1 or self.n % rows)):
            raise ValueError(f"tables of {rows} rows: one per sample of x ({self.n}) or per segment of its batch "
                             f"(a number of rows dividing {self.n})")
        self.num_segments = rows if self.per_sample else 1
        self.seg_len = (self.n // rows if rows else 0) * self.s if self.per_sample else self.n * self.s
        self.tbl_stride = self.c if self.per_sample else 0
        if s_c == 1 and self.c > 1:  # channels are contiguous: tile along C
            self.block_c = min(64, next_power_of_2(self.c))
            self.block_m = max(1, min(4096 // self.block_c, next_power_of_2(self.seg_len)))
        else:  # spatial positions are contiguous: tile along m
            self.block_c = 1
            self.block_m = min(2048, next_power_of_2(self.seg_len))
        self.index_64 = x.numel() >= 2**31 - 1
        self.num_warps = 4 if self.block_c * self.block_m <= 1024 else 8
        self.num_tiles = cdiv(self.seg_len, self.block_m)
        self.num_cblocks = cdiv(self.c, self.block_c)
        self.partials = self._num_partials(x)
        self.kernel_args = (self.c, self.s, *self.strides)  # the kernels' (C, S, s_n, s_c, s_s) arguments
        self.meta = dict(BLOCK_M=self.block_m, BLOCK_C=self.block_c, INDEX_64=self.index_64,
                         num_warps=self.num_warps)

    def _num_partials(self, x: torch.Tensor) -> int:
        """Programs per (channel block, segment) for the reductions: enough to fill the GPU."""
        programs = self.num_cblocks * self.num_segments
        sms = multiprocessors(x)
        if sms is not None:
            target = 4 * sms
        else:  # interpreter: few programs, but more than one so the merge is exercised
            target = 2 * programs
        return max(1, min(self.num_tiles, target // programs, 512))


_GEOMETRIES: dict = {}  # (shape, strides, table rows, device, compile target) -> _Geometry


def _geometry(x: torch.Tensor, rows: Optional[int]) -> _Geometry:
    """x's ``_Geometry`` for (C,) vectors (``rows`` None) or (rows, C) tables, made once per shape,
    strides and device: a fused layer's forward and backward size three to five launches of the same
    x, and building one costs more host time than a lookup."""
    key = (x.shape, x.stride(), rows, x.device, _target.compile_only)
    g = _GEOMETRIES.get(key)
    if g is None:
        if len(_GEOMETRIES) >= 1024:  # many shapes (a sweep): start over rather than grow without bound
            _GEOMETRIES.clear()
        g = _GEOMETRIES[key] = _Geometry(x, rows)
    return g


_SLOPES: dict = {}  # (slope, dtype, device) -> a 1-element tensor: one fill launch per value, not per call


def _slope_tensor(slope: float, like: torch.Tensor) -> torch.Tensor:
    """The activation's slope as a 1-element tensor of the statistics' dtype (float64 needs it exact;
    Triton's float arguments are float32), made once per (value, dtype, device) by a synchronous copy,
    so any stream may read it afterwards.  While a CUDA graph is being captured a new value gets a
    fill inside the graph instead (a synchronous copy is not allowed there), and is not cached: that
    fill only runs when the graph is replayed."""
    key = (float(slope), like.dtype, like.device)
    t = _SLOPES.get(key)
    if t is not None:
        return t
    if like.is_cuda and torch.cuda.is_current_stream_capturing():
        return torch.full((1,), slope, dtype=like.dtype, device=like.device)
    t = torch.tensor([slope], dtype=like.dtype, device=like.device)
    if len(_SLOPES) < 64:
        _SLOPES[key] = t
    return t


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of x over (N, *spatial), in float32
    (float64 for float64 x): Welford within tiles, Chan merging across them."""
    return _channel_stats(x, None)


def channel_stats_affine(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                         running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
                         momentum: float, eps: float):
    """(mean, var, invstd, scale, shift): ``channel_stats`` whose merge kernel also does
    ``stats_affine`` (running stats, when given, updated in place); same arguments as
    ``torch.ops.fastgan.channel_stats_affine``.  Float64 takes two steps (Triton's float
    arguments are float32; eps and momentum must stay exact)."""
    count = x.numel() // max(x.shape[1], 1)
    has_running = running_mean is not None or running_var is not None
    if has_running and count < 2:
        raise ValueError(f"x must have more than 1 value per channel to update running stats, got {count}")
    if x.dtype == torch.float64 or (running_mean is None) != (running_var is None):
        mean, var = channel_stats(x)
        return (mean, var, *stats_affine(mean, var, weight, bias, running_mean, running_var, count, momentum, eps))
    affine = dict(weight=weight, bias=bias, running_mean=running_mean, running_var=running_var,
                  eps=float(eps), momentum=float(momentum), unbias=count / (count - 1) if has_running else 1.0)
    return _channel_stats(x, affine)


def _channel_stats(x: torch.Tensor, affine: Optional[dict]):
    """(mean, var), or with ``affine`` (channel_stats_affine's arguments) (mean, var, invstd, scale, shift)."""
    return _merge_moments(x, None, affine=affine)


def row_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(n, c) mean and M2 (sum of squared deviations) over the spatial
    positions, each (N, C); the caller merges rows into group statistics."""
    return _merge_moments(x, x.shape[0], affine=None)


def segment_stats(x: torch.Tensor, segments: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(segment, c) mean and biased variance over ``segments`` equal segments of consecutive samples,
    each (segments, C): the batch statistics of each segment alone (``stats_affine`` takes them)."""
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1 or x.shape[0] % segments:
        raise ValueError(f"segments must be a positive divisor of x's batch size {x.shape[0]}, got {segments!r}")
    return _merge_moments(x, segments, affine=None, variance=True)


def row_stats_affine(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], groups: int,
                     eps: float):
    """(mean, invstd, scale, shift) (N, C) tables of x's per-sample group statistics: ``row_moments``,
    then ``group_stats_affine`` of them, in one call (the CUDA op's signature)."""
    row_mean, row_m2 = row_moments(x)
    rows = x.shape[0] * x.shape[1]
    return group_stats_affine(row_mean, row_m2, weight, bias, groups, x.numel() // rows if rows else 0, eps)


def _merge_moments(x: torch.Tensor, rows: Optional[int], affine: Optional[dict], variance: Optional[bool] = None):
    """The per-(segment, channel) statistics: the mean and the biased variance, (C,) each (batch norm, one
    segment; ``rows`` None), or the mean and M2 (the variance with ``variance``), (rows, C) tables (rows
    segments: N per sample); with ``affine``
    (channel_stats_affine's arguments) also invstd, scale and shift, (C,) each.  Two launches -- the partial
    moments, then their merge -- or one where a program per segment and channel block fills the GPU.  The
    outputs are rows of one allocation: this runs in every layer's forward, where each allocation and view
    costs host time."""
    g = _geometry(x, rows)
    per_sample, segments, c = g.per_sample, g.num_segments, g.c
    dtype = _acc_dtype(x)
    buf = torch.empty((2 * segments + (0 if affine is None else 3), c), device=x.device, dtype=dtype)
    out = (buf[:segments], buf[segments:2 * segments]) if per_sample else buf.unbind(0)
    if c == 0 or segments == 0:
        return out
    mean = out[0]
    a = affine or {}
    vec = [a.get(name) if a.get(name) is not None else mean
           for name in ("weight", "bias", "running_mean", "running_var")]
    tables = out[2:] if affine else [mean] * 3
    scalars = (a.get("eps", 0.0), a.get("momentum", 0.0), a.get("unbias", 1.0))
    flags = dict(VARIANCE=not per_sample if variance is None else variance, AFFINE=affine is not None, HAS_WEIGHT=a.get("weight") is not None,
                 HAS_BIAS=a.get("bias") is not None, HAS_RUNNING=a.get("running_mean") is not None,
                 SQRT_RN=HAS_SQRT_RN)
    if g.partials == 1:
        _stats_single_pass_kernel[(g.num_cblocks, 1, segments)](
            x, out[0], out[1], g.seg_len, *g.kernel_args, g.num_tiles, *vec, *tables, *scalars, **flags, **g.meta)
        return out
    parts = torch.empty((3, segments, g.partials, c), device=x.device, dtype=dtype)
    _stats_partial_kernel[(g.num_cblocks, g.partials, segments)](
        x, *parts.unbind(0), g.seg_len, *g.kernel_args, g.num_tiles, g.partials, **g.meta)
    fin_c = min(64, next_power_of_2(c))
    _stats_finalize_kernel[(cdiv(c, fin_c), segments)](
        *parts.unbind(0), out[0], out[1], c, g.partials, *vec, *tables, *scalars,
        BLOCK_P=next_power_of_2(g.partials), BLOCK_C=fin_c, **flags)
    return out


def _table_rows(scale: torch.Tensor) -> Optional[int]:
    """Rows of (T, C) tables, None for (C,) vectors."""
    return scale.shape[0] if scale.dim() == 2 else None


def _shuffled_empty(x: torch.Tensor, upscale: int) -> torch.Tensor:
    """An output in y's layout: like x, or pixel_shuffle(x, upscale) contiguous."""
    if upscale == 1:
        return torch.empty_like(x)
    n, c, h, w = x.shape
    return x.new_empty((n, c // (upscale * upscale), h * upscale, w * upscale))


def _width(x: torch.Tensor, upscale: int) -> int:
    if upscale == 1:
        return 1
    if x.dim() != 4 or not x.is_contiguous():
        raise ValueError("pixel-shuffle kernels take a contiguous (N, C, H, W) x")
    return x.shape[-1]


def norm_act_forward(x, scale, shift, act: int, slope: float, upscale: int = 1) -> torch.Tensor:
    """y = act(x * scale + shift) with x's dtype and strides; scale, shift (C,) or (N, C).
    With ``upscale`` r > 1, y is written pixel-shuffled: (N, C / r^2, H r, W r)."""
    y = _shuffled_empty(x, upscale)
    _launch_pointwise(MODE_FORWARD, x, None, None, y, None, scale, shift, scale, scale, (), slope, upscale)
    return y


def _grad_sums(double: bool, gy, x, u, scale, shift, mean, invstd, slope, upscale):
    g = _geometry(x, _table_rows(scale))
    k = 5 if double else 2
    parts = torch.empty((k, g.num_segments, g.partials, g.c), device=x.device, dtype=scale.dtype)
    _grad_sums_kernel[(g.num_cblocks, g.partials, g.num_segments)](
        gy, x, x if u is None else u, scale, shift, mean, invstd, parts, g.seg_len, g.tbl_stride,
        *g.kernel_args, g.num_tiles, g.partials, _slope_tensor(slope, scale), _width(x, upscale),
        DOUBLE=double, UPSCALE=upscale, enable_fp_fusion=False, **g.meta)  # see _launch_pointwise
    # fixed-order merge of the partials: deterministic; with one program per segment (every per-sample
    # layer, and batch norm over many channels) there is nothing to merge, and a view saves a launch
    sums = parts[:, :, 0] if g.partials == 1 else parts.sum(dim=2)
    return tuple(sums.unbind(0)) if g.per_sample else tuple(sums[:, 0].unbind(0))


def norm_act_backward_reduce(gy, x, scale, shift, mean, invstd, act: int, slope: float, upscale: int = 1):
    """(sum gz, sum gz * xhat), gz = gy * act'(x * scale + shift): per channel
    over (N, *spatial) for (C,) vectors, per (n, c) over spatial for (N, C) tables.
    gy is in y's layout (pixel-shuffled when ``upscale`` > 1)."""
    return _grad_sums(False, gy, x, None, scale, shift, mean, invstd, slope, upscale)


def norm_act_backward_reduce_coefficients(gy, x, scale, shift, mean, invstd, act: int, slope: float, groups: int,
                                          count: int, upscale: int = 1):
    """(sum gz, sum gz * xhat, k2, k3, sum_g, sum_gx): ``norm_act_backward_reduce``, then
    ``norm_act_backward_coefficients`` of its sums, in one call (the CUDA op's signature)."""
    r_g, r_gx = norm_act_backward_reduce(gy, x, scale, shift, mean, invstd, act, slope, upscale)
    return (r_g, r_gx, *norm_act_backward_coefficients(r_g, r_gx, scale.contiguous(), groups, count))


def norm_act_backward_apply(gy, x, scale, shift, mean, invstd, k1, k2, k3, act: int, slope: float,
                            upscale: int = 1):
    """dx = k1 * gz + k2 + k3 * xhat (dx in x's layout)."""
    dx = torch.empty_like(x)
    _launch_pointwise(MODE_BACKWARD, x, gy, None, dx, None, scale, shift, mean, invstd, (k1, k2, k3), slope,
                      upscale)
    return dx


def norm_act_double_reduce(u, gy, x, scale, shift, mean, invstd, act: int, slope: float, upscale: int = 1):
    """(sum gz, sum gz*xhat, sum u, sum u*xhat, sum gz*u), reduced as in norm_act_backward_reduce."""
    return _grad_sums(True, gy, x, u, scale, shift, mean, invstd, slope, upscale)


def norm_act_double_apply(u, gy, x, scale, shift, mean, invstd, a1, a2, a3, b1, b2, b3, b4,
                          act: int, slope: float, upscale: int = 1):
    """(ggx, ggy) = (b1*gz + b2*u + b3 + b4*xhat, s * (a1*u + a2 + a3*xhat)); ggy in y's layout."""
    ggx = torch.empty_like(x)
    ggy = torch.empty_like(gy)
    _launch_pointwise(MODE_DOUBLE, x, gy, u, ggx, ggy, scale, shift, mean, invstd, (a1, a2, a3, b1, b2, b3, b4),
                      slope, upscale)
    return ggx, ggy


def _coefficient_tables(coef: tuple, scale: torch.Tensor) -> list:
    """The pointwise kernel's seven coefficient pointers: ``coef``'s tables, each read like scale (its
    shape, dense, in its dtype), then scale for the ones the mode does not read."""
    tables = []
    names = ("k1", "k2", "k3") if len(coef) == 3 else ("a1", "a2", "a3", "b1", "b2", "b3", "b4")
    for name, t in zip(names, coef):
        if t.shape != scale.shape:  # the kernel reads each table at scale's offsets: past the end of a smaller one
            raise ValueError(f"{name} must have shape {tuple(scale.shape)} like scale, got {tuple(t.shape)}")
        if t.dtype != scale.dtype:
            t = t.to(scale.dtype)
        tables.append(t if t.is_contiguous() else t.contiguous())
    return tables + [scale] * (7 - len(tables))


def _launch_pointwise(mode, x, gy, u, out, out2, scale, shift, mean, invstd, coef, slope, upscale):
    """``coef``: the mode's coefficient tables, () (forward), (k1, k2, k3) or (a1, a2, a3, b1, b2, b3, b4)."""
    g = _geometry(x, _table_rows(scale))
    grid = (g.num_tiles, g.num_cblocks, g.num_segments)
    _pointwise_kernel[grid](x, x if gy is None else gy, x if u is None else u, out,
                            out if out2 is None else out2, scale, shift, mean, invstd,
                            *_coefficient_tables(coef, scale), g.seg_len, g.tbl_stride, *g.kernel_args,
                            _slope_tensor(slope, scale), _width(x, upscale), MODE=mode, UPSCALE=upscale,
                            # no fused multiply-add: z = x * scale + shift rounded twice is exactly 0 for x
                            # equal to its channel's mean with a zero bias, so the activation's kink ties as
                            # in eager PyTorch (csrc/batch_norm_act.cu, affine_rn)
                            enable_fp_fusion=False, **g.meta)
