"""What ``compile_check`` runs: each op's forward, backward and double backward
in every dtype, layout and launch configuration a GPU gets.

Shapes are picked for the launch configurations they produce on a GPU, not
for their numbers: batch-norm statistics over thousands of positions (the
widest tiles, 8 warps), channels-last tiling along C, tiny maps (narrow tiles,
4 warps), (N, C) inputs, per-sample statistics, the pixel shuffle's
``UPSCALE``, minibatch discrimination's small and large N, every penalty mode.
Values are never read (the launches only compile), so tensors are random only
to keep every autograd path alive.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

from .. import ops

FULL_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
QUICK_DTYPES = (torch.float32, torch.bfloat16)

# name -> (shape, memory format); the comments say which launch configuration each one reaches
NORM_SHAPES = {
    "nchw": ((64, 128, 8, 8), torch.contiguous_format),       # tiles along m: BLOCK_M 2048, 8 warps
    "nhwc": ((64, 128, 8, 8), torch.channels_last),           # tiles along C: BLOCK_C 64
    "nc": ((256, 512), None),                                 # (N, C): channels contiguous
    "nchw-tiny": ((4, 8, 2, 2), torch.contiguous_format),     # narrow tiles, 4 warps
}
QUICK_NORM_SHAPES = ("nchw", "nhwc", "nc")
MBD_SIZES = (16, 64, 300)  # N: one tile, the SM-filling split, several tiles
PENALTY_SHAPES = ((64, 3, 32, 32), (8, 1, 28, 28))

Case = tuple[str, Callable[[], None]]


def _param_dtype(dtype: torch.dtype) -> torch.dtype:
    """Parameters stay float32 under autocast; float64 runs are float64 throughout."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _input(shape, dtype, memory_format=None, requires_grad=True) -> torch.Tensor:
    x = torch.randn(shape, dtype=torch.float32).to(dtype)
    if memory_format is not None and x.dim() == 4:
        x = x.contiguous(memory_format=memory_format)
    return x.requires_grad_(requires_grad)


def _params(channels: int, dtype: torch.dtype):
    p = _param_dtype(dtype)
    return (torch.randn(channels, dtype=p).requires_grad_(), torch.randn(channels, dtype=p).requires_grad_())


def _weighted_sum(tensors) -> torch.Tensor:
    return sum((t.float() * torch.randn(t.shape)).sum() for t in tensors if t is not None)


def forward_backward_double(fn: Callable, *inputs: torch.Tensor) -> None:
    """fn's forward, its backward with create_graph, and the backward of those gradients: the three
    passes of a layer inside a gradient penalty."""
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(_weighted_sum(outs), leaves, create_graph=True, allow_unused=True)
    second = _weighted_sum(g for g in grads if g is not None and g.requires_grad)
    if isinstance(second, torch.Tensor):
        second.backward()


# ----------------------------------------------------------------------------- per op


def _batch_norm_cases(tag, shape, fmt, dtype) -> list[Case]:
    c = shape[1]
    pdt = _param_dtype(dtype)

    def train():
        w, b = _params(c, dtype)
        rm, rv = torch.zeros(c, dtype=pdt), torch.ones(c, dtype=pdt)
        forward_backward_double(
            lambda x, w, b: ops.batch_norm_act(x, rm, rv, w, b, training=True, impl="triton"),
            _input(shape, dtype, fmt), w, b)

    def evaluate():
        w, b = _params(c, dtype)
        rm, rv = torch.zeros(c, dtype=pdt), torch.ones(c, dtype=pdt)
        forward_backward_double(
            lambda x, w, b: ops.batch_norm_act(x, rm, rv, w, b, training=False, activation="relu", impl="triton"),
            _input(shape, dtype, fmt), w, b)

    def no_affine():  # batch statistics only: no weight, bias or running stats
        forward_backward_double(lambda x: ops.batch_norm_act(x, impl="triton"), _input(shape, dtype, fmt))

    def segmented():  # statistics per half of the batch: (2, C) tables, running stats updated per half
        w, b = _params(c, dtype)
        rm, rv = torch.zeros(c, dtype=pdt), torch.ones(c, dtype=pdt)
        forward_backward_double(
            lambda x, w, b: ops.batch_norm_act(x, rm, rv, w, b, training=True, impl="triton", segments=2),
            _input(shape, dtype, fmt), w, b)

    cases = [(f"batch_norm_act train {tag} {dtype}", train), (f"batch_norm_act eval {tag} {dtype}", evaluate),
             (f"batch_norm_act no affine {tag} {dtype}", no_affine)]
    if shape[0] % 2 == 0:
        cases.append((f"batch_norm_act segments=2 {tag} {dtype}", segmented))
    return cases


def _per_sample_norm_cases(tag, shape, fmt, dtype) -> list[Case]:
    c = shape[1]
    cases = []

    def layer():
        w, b = _params(c, dtype)
        forward_backward_double(lambda x, w, b: ops.layer_norm_act(x, w, b, impl="triton"),
                                _input(shape, dtype, fmt), w, b)

    cases.append((f"layer_norm_act {tag} {dtype}", layer))
    if len(shape) == 4:
        def group():
            w, b = _params(c, dtype)
            forward_backward_double(lambda x, w, b: ops.group_norm_act(x, 4, w, b, impl="triton"),
                                    _input(shape, dtype, fmt), w, b)

        def instance():
            w, b = _params(c, dtype)
            forward_backward_double(lambda x, w, b: ops.instance_norm_act(x, weight=w, bias=b, impl="triton"),
                                    _input(shape, dtype, fmt), w, b)

        cases += [(f"group_norm_act {tag} {dtype}", group), (f"instance_norm_act {tag} {dtype}", instance)]
    return cases


def _virtual_batch_norm_cases(tag, shape, fmt, dtype) -> list[Case]:
    c = shape[1]

    def vbn(x, x_ref, w, b):
        mean, sq_mean = ops.virtual_batch_reference_stats(x_ref, impl="triton")
        y_ref = ops.virtual_batch_norm(x_ref, mean, sq_mean, shape[0], w, b, activation="leaky_relu", impl="triton",
                                       reference_batch=True)
        return ops.virtual_batch_norm(x, mean, sq_mean, shape[0], w, b, activation="leaky_relu", impl="triton"), y_ref

    def inputs():
        return (_input(shape, dtype, fmt), _input(shape, dtype, fmt), *_params(c, dtype))

    def run():
        forward_backward_double(vbn, *inputs())

    def first_order():  # the tables' backward kernels (differentiated again, the tables take the reference)
        _weighted_sum(vbn(*inputs())).backward()

    return [(f"virtual_batch_norm {tag} {dtype}", run), (f"virtual_batch_norm first order {tag} {dtype}", first_order)]


def _pixel_shuffle_cases(tag, shape, fmt, dtype) -> list[Case]:
    if len(shape) != 4 or fmt is not torch.contiguous_format or shape[1] % 4:
        return []
    c_out = shape[1] // 4

    def plain():
        b = _params(c_out, dtype)[1]
        forward_backward_double(lambda x, b: ops.pixel_shuffle_act(x, 2, b, impl="triton"), _input(shape, dtype, fmt), b)

    def with_batch_norm():
        w, b = _params(c_out, dtype)
        forward_backward_double(lambda x, w, b: ops.pixel_shuffle_batch_norm_act(x, 2, weight=w, bias=b, impl="triton"),
                                _input(shape, dtype, fmt), w, b)

    return [(f"pixel_shuffle_act {tag} {dtype}", plain), (f"pixel_shuffle_batch_norm_act {tag} {dtype}", with_batch_norm)]


def _minibatch_cases(n, dtype) -> list[Case]:
    def run(exclude_self):
        forward_backward_double(lambda m: ops.minibatch_discrimination(m, exclude_self=exclude_self, impl="triton"),
                                _input((n, 32, 8), dtype))

    return [(f"minibatch_discrimination N={n} exclude_self={e} {dtype}", functools.partial(run, e)) for e in (False, True)]


def _penalty_cases(shape, dtype) -> list[Case]:
    """A WGAN-GP style pass: interpolate, a fused layer as the critic, its input gradient with
    create_graph, each penalty mode, backward through all of it."""
    def run(mode):
        real, fake = _input(shape, dtype, requires_grad=False), _input(shape, dtype)
        eps = torch.rand(shape[0], dtype=_param_dtype(dtype), requires_grad=True)
        x_hat = ops.interpolate(real, fake, eps, impl="triton")
        critic_out = ops.batch_norm_act(x_hat, impl="triton")
        (grad,) = torch.autograd.grad(_weighted_sum([critic_out]), x_hat, create_graph=True)
        ops.penalty_from_grad(grad, mode=mode, impl="triton").backward()

    return [(f"penalty {mode} {tuple(shape)} {dtype}", functools.partial(run, mode))
            for mode in ("two-sided", "one-sided", "squared")]


def all_cases(quick: bool = False) -> list[Case]:
    dtypes = QUICK_DTYPES if quick else FULL_DTYPES
    shapes = {k: v for k, v in NORM_SHAPES.items() if not quick or k in QUICK_NORM_SHAPES}
    cases: list[Case] = []
    for dtype in dtypes:
        for tag, (shape, fmt) in shapes.items():
            for family in (_batch_norm_cases, _per_sample_norm_cases, _virtual_batch_norm_cases, _pixel_shuffle_cases):
                cases += family(tag, shape, fmt, dtype)
        for n in MBD_SIZES:
            cases += _minibatch_cases(n, dtype)
        for shape in PENALTY_SHAPES[:1] if quick else PENALTY_SHAPES:
            cases += _penalty_cases(shape, dtype)
    return cases
