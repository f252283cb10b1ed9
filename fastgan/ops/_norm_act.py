"""Autograd for the whole normalization + activation family, on any fast backend.

Batch, group, instance and layer norm differ only in which elements share
statistics; the algebra of their gradients is the same.  With, per
statistics group k of M elements, per channel c::

    xhat = (x - mean_k) * r_k,   r_k = 1 / sqrt(var_k + eps)
    z    = w_c * xhat + b_c = x * scale + shift,       y = act(z)
    s    = act'(z)  (1 or the negative slope; a mask recomputed from x)
    gz   = gy * s,   g~ = w_c * gz

the backward is::

    db_c = sum gz,   dw_c = sum gz * xhat      (over the channel's elements)
    dx   = r_k (g~ - mean_k(g~) - xhat * mean_k(g~ * xhat))

and is itself a Function whose backward -- the double backward a gradient
penalty needs -- is derived in ``docs/norm_act_double_backward.md``.  Every
pass is one kernel: a reduction (per channel over (N, *spatial) for batch
norm, per (n, c) over *spatial otherwise) or an elementwise map
``out = k1 * a + k2 + k3 * xhat`` whose coefficients come from the
reductions in one small launch (``norm_act_backward_coefficients``,
``norm_act_double_coefficients``).  ``Grouping`` says how the per-(n, c)
sums combine into statistics groups; the kernels (``fastgan/kernels/batch_norm_act.py`` for
Triton, ``torch.ops.fastgan.*`` for CUDA) take (C,) vectors or (N, C) tables.

On the CUDA backend this autograd runs in C++ (``csrc/norm_act_autograd.cpp``,
``torch.ops.fastgan.norm_act`` / ``norm_act_stats``; see ``norm_act``), with
the same structure and kernels as the Functions here, which the Triton
backend uses: ``tests/test_norm_act_autograd.py`` holds the two to the same
bits.

When the statistics are constants (batch norm in eval mode) the terms that
come from differentiating them drop out (``batch_stats=False``).  With
mean 0, invstd 1 and ``batch_stats=False`` the Functions are a plain fused
``act(x * weight + bias)`` whose weight and bias may be (N, C) tables: ops
with their own statistics (virtual batch norm) build on that, letting
autograd carry the statistics' derivatives.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from .. import _backend
from ..reference.norm_act_double import double_coefficients
from ._autograd import last_derivative
from ._layout import like


class Grouping(NamedTuple):
    """Which elements share statistics.

    per_sample=False: ``groups`` groups of C / groups consecutive channels
    over (N, *spatial): batch norm (groups = C), or batch norm after a pixel
    shuffle (C / groups = r^2 sub-channels feed one output channel); vectors
    are (C,).  per_sample=True: ``groups`` groups of C / groups channels in
    each sample; tables are (N, C); or, with ``segments`` T > 0, in each of T
    equal segments of consecutive samples (batch norm per segment), tables
    (T, C).  ``upscale`` r > 1: the output y (and so
    gy) is pixel_shuffle(., r) of x's layout.  (A NamedTuple: one is made in every fused layer's
    forward, and a frozen dataclass costs several times as much to make.)
    """
    per_sample: bool
    groups: int
    batch_stats: bool = True
    upscale: int = 1
    segments: int = 0

    def group_size(self, x: torch.Tensor) -> int:
        n, c = x.shape[0], x.shape[1]
        spatial = x.numel() // max(n * c, 1)
        per_group = (c // self.groups) * spatial
        if not self.per_sample:
            return n * per_group
        return per_group * (n // self.segments if self.segments else 1)

    def kernel_kwargs(self) -> dict:
        """Extra kernel arguments: ``upscale`` only when it is not 1 (the kernels default to 1)."""
        return {} if self.upscale == 1 else {"upscale": self.upscale}

    def as_y_layout(self, gy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return like(gy, x) if self.upscale == 1 else gy.contiguous()


def sum_to_param(t: torch.Tensor, param, row_sums=None) -> torch.Tensor:
    """Per-(n, c) or per-channel sums -> the shape of a weight / bias: (C,),
    or an (N, C) table when the caller passes per-sample affine tables.
    ``row_sums``: t summed over its rows, when a kernel has computed it already."""
    if t.dim() == 2 and (param is None or param.dim() == 1):
        return t.sum(0) if row_sums is None else row_sums
    return t


def affine_tables(mean, invstd, weight, bias):
    """(scale, shift, w): z = x * scale + shift, with w the per-channel weight (ones if None)."""
    w = invstd.new_ones(invstd.shape[-1]) if weight is None else weight.to(invstd.dtype)
    scale = invstd if weight is None else w * invstd
    # Fewest launches: these small per-channel ops run in every fused layer's forward.
    shift = (mean * scale).neg_() if bias is None else torch.addcmul(bias.to(invstd.dtype), mean, scale, value=-1.0)
    return scale, shift, w


def as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in ``dtype`` (t itself when it already is: no dispatch)."""
    return t if t.dtype == dtype else t.to(dtype)


def kernel_running_stats(running_mean, running_var, training, momentum, dtype):
    """(kernel_running, kernel_momentum, rest): the running stats a batch-norm layer's statistics
    kernel updates in place (when training with them and they are dense in the statistics' dtype;
    else (None, None) and momentum 0), and ``rest``, the pair the caller must update itself
    afterwards (e.g. float16 buffers; (None, None) when none).  Updating them in the statistics'
    own kernel saves the launches of a separate update in every such layer's forward."""
    running = (running_mean, running_var) if training and running_mean is not None else (None, None)
    if running[0] is None or all(t.dtype == dtype and t.is_contiguous() for t in running):
        return running, float(momentum) if running[0] is not None else 0.0, (None, None)
    return (None, None), 0.0, running


def detached_param(t, dtype):
    """A weight or bias as the statistics kernels take it: detached (their outputs are constants to
    autograd; the Functions differentiate through weight and bias themselves), in ``dtype``, dense.
    Each step only when needed: this runs twice in every fused layer's forward."""
    if t is None:
        return None
    t = as_dtype(t.detach(), dtype)
    return t if t.is_contiguous() else t.contiguous()


def norm_act(x, weight, bias, mean, invstd, grouping: Grouping, act, slope, backend, scale=None, shift=None):
    """act(w * (x - mean) * invstd + b), differentiable twice, on a fast backend: the fused forward of
    the whole family.  ``scale`` / ``shift``: the affine tables of (mean, invstd, weight, bias) when
    the caller has them.

    The CUDA backend runs it as one op, ``torch.ops.fastgan.norm_act``, whose autograd is C++
    (``csrc/norm_act_autograd.cpp``): its backward never enters Python (about half a fused layer's
    host time in ``benchmarks/host_overhead.py`` on a CPU; not yet measured on a GPU).  The Triton
    backend, and with the batch's statistics more table rows than the double-backward coefficient
    kernel takes, use the Python Functions below.  (The pixel-shuffle ops
    call the op themselves, with per-output-channel tables: ``pixel_shuffle_act._shuffled_norm_act``.)"""
    if backend == "cuda" and cpp_autograd_fits(weight, bias, invstd.numel() // max(invstd.shape[-1], 1),
                                               grouping.batch_stats):
        if scale is None:
            scale, shift, _ = affine_tables(mean, invstd, detached_param(weight, invstd.dtype),
                                            detached_param(bias, invstd.dtype))
        return _backend.kernels(backend, "batch_norm_act").norm_act(
            x, weight, bias, mean, invstd, scale, shift, grouping.groups, grouping.batch_stats, act, slope,
            grouping.upscale)
    return NormActFn.apply(x, weight, bias, mean, invstd, grouping, act, slope, backend, scale, shift)


def cpp_autograd_fits(weight, bias, rows: int = 1, batch_stats: bool = True) -> bool:
    """Whether the CUDA backend's C++ autograd takes a call: with constant statistics always (it computes
    the double backward's few coefficients itself for (N, C) parameter tables, virtual batch norm's);
    with the batch's statistics, weight and bias None or (C,) vectors and at most 65535 rows of
    statistics (samples, with per-sample statistics) for its double backward's coefficient kernel."""
    if torch.compiler.is_compiling():
        # under torch.compile the host path is compiled away, and the Python Functions trace with symbolic
        # shapes (a changed batch size recompiles dynamic), where the C++ autograd reads concrete sizes
        return False
    if not batch_stats:
        return True
    return (weight is None or weight.dim() == 1) and (bias is None or bias.dim() == 1) and rows <= 65535


class NormActFn(torch.autograd.Function):
    """(x, weight, bias) -> act(w * (x - mean) * invstd + b) with given statistics."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, invstd, grouping, act, slope, backend, scale=None, shift=None):
        """``scale`` and ``shift``, when the caller has them (``stats_affine``), are the affine tables
        of (mean, invstd, weight, bias); else they are computed here."""
        k = _backend.kernels(backend, "batch_norm_act")
        if scale is None:
            scale, shift, _ = affine_tables(mean, invstd, weight, bias)
        y = k.norm_act_forward(x, scale, shift, act, slope, **grouping.kernel_kwargs())
        # scale and shift are kept (2 x C values): recomputing them would cost launches in each backward.
        ctx.save_for_backward(x, weight, bias, mean, invstd, scale, shift)
        ctx.config = (grouping, act, slope, backend)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight, bias, mean, invstd, scale, shift = ctx.saved_tensors
        args = (gy, x, weight, bias, mean, invstd, scale, shift, *ctx.config)
        # A backward that builds a graph (create_graph=True: a gradient penalty) goes through the
        # differentiable Function; a plain one calls the same code directly, without a Function's
        # host overhead (about a third of a fused layer's backward on the host).
        dx, dw, db = NormActBackwardFn.apply(*args) if torch.is_grad_enabled() else _backward(*args)
        need_w = weight is not None and ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        return (dx, as_dtype(dw, weight.dtype) if need_w else None, as_dtype(db, bias.dtype) if need_b else None,
                None, None, None, None, None, None, None, None)


def _backward(gy, x, weight, bias, mean, invstd, scale, shift, grouping, act, slope, backend):
    """(dx, dw, db): one reduction, its coefficients, one elementwise pass (see the module docstring)."""
    k = _backend.kernels(backend, "batch_norm_act")
    gy = grouping.as_y_layout(gy, x)
    kw = grouping.kernel_kwargs()
    if grouping.batch_stats:
        # one call: the sums, then from them k2, k3 (the statistics' terms) and r_g, r_gx summed over the
        # rows of (N, C) tables (norm_act_backward_coefficients)
        r_g, r_gx, k2, k3, sum_g, sum_gx = k.norm_act_backward_reduce_coefficients(
            gy, x, scale, shift, mean, invstd, act, slope, grouping.groups, grouping.group_size(x), **kw)
    else:
        r_g, r_gx = k.norm_act_backward_reduce(gy, x, scale, shift, mean, invstd, act, slope, **kw)
        k2 = k3 = torch.zeros_like(scale)
        sum_g = sum_gx = None
    dx = k.norm_act_backward_apply(gy, x, scale, shift, mean, invstd, scale, k2, k3, act, slope, **kw)
    return dx, sum_to_param(r_gx, weight, sum_gx), sum_to_param(r_g, bias, sum_g)


class NormActBackwardFn(torch.autograd.Function):
    """(gy, x, weight, bias) -> (dx, dw, db); differentiable once more.

    ``scale`` and ``shift`` are the forward's affine tables of (mean, invstd, weight, bias), passed
    along rather than recomputed; derivatives flow through weight and bias, never through them."""

    @staticmethod
    def forward(ctx, gy, x, weight, bias, mean, invstd, scale, shift, grouping, act, slope, backend):
        # unused outputs (a gradient penalty differentiates dx only) reach backward as None, not as
        # zero tensors autograd would allocate and launch for
        ctx.set_materialize_grads(False)
        gy = grouping.as_y_layout(gy, x)
        out = _backward(gy, x, weight, bias, mean, invstd, scale, shift, grouping, act, slope, backend)
        ctx.save_for_backward(gy, x, weight, bias, mean, invstd, scale, shift)
        ctx.config = (grouping, act, slope, backend)
        return out

    @staticmethod
    def backward(ctx, u, alpha, beta):
        gy, x, weight, bias, mean, invstd, scale, shift = ctx.saved_tensors
        ggy, ggx, grad_w = last_derivative(
            functools.partial(_double_backward, ctx.config), u, alpha, beta, gy, x, weight, bias, mean, invstd,
            scale, shift)
        grad_weight = as_dtype(grad_w, weight.dtype) if weight is not None and ctx.needs_input_grad[2] else None
        # bias only moves the activation's kink: its second derivative is zero almost everywhere.
        grad_bias = torch.zeros_like(bias) if bias is not None and ctx.needs_input_grad[3] else None
        return ggy, ggx, grad_weight, grad_bias, None, None, None, None, None, None, None, None


def _double_backward(config, u, alpha, beta, gy, x, weight, bias, mean, invstd, scale, shift):
    """Double backward: u, alpha, beta = grads wrt dx, dw, db.

    Returns (grad wrt gy, grad wrt x, grad wrt weight): the five sums (one
    reduction kernel), their coefficients (``norm_act_double_coefficients``, one
    launch; math in ``fastgan.reference.norm_act_double`` and
    ``docs/norm_act_double_backward.md``), then one elementwise kernel."""
    grouping, act, slope, backend = config
    k = _backend.kernels(backend, "batch_norm_act")
    u = torch.zeros_like(x) if u is None else like(u, x)
    kw = grouping.kernel_kwargs()
    sums = k.norm_act_double_reduce(u, gy, x, scale, shift, mean, invstd, act, slope, **kw)
    dtype = invstd.dtype
    alpha = None if alpha is None else alpha.to(dtype)
    beta = None if beta is None else beta.to(dtype)
    weight_c = None if weight is None else weight.to(dtype)
    rows = invstd.numel() // max(invstd.shape[-1], 1)
    args = (*sums, weight_c, invstd, alpha, beta, grouping.groups, grouping.group_size(x), grouping.batch_stats)
    if all(t is None or t.dim() == 1 for t in (weight, alpha, beta)) and rows <= 65535:
        coef = k.norm_act_double_coefficients(*(t.contiguous() if isinstance(t, torch.Tensor) else t for t in args))
    else:  # per-sample weight tables (virtual batch norm) or > 65535 rows: the same math in PyTorch
        # (csrc/norm_act_autograd.cpp's double_impl has the constant-statistics case of it, op for op)
        coef = double_coefficients(*args)
    *coef, grad_w = coef
    ggx, ggy = k.norm_act_double_apply(u, gy, x, scale, shift, mean, invstd, scale, *coef, act, slope, **kw)
    return ggy, ggx, sum_to_param(grad_w, weight)
