"""Fused BatchNorm + LeakyReLU(0.2) against ``nn.BatchNorm2d`` + ``nn.LeakyReLU``.

Shapes are the batch-norm layers of DCGAN-64 (ngf = ndf = 64) at batch 128:
``Gk`` is the k-th BN layer of the generator, ``Dk`` of the discriminator (the
discriminator's first conv has no BN).  Both networks have the same four
shapes, so each is measured once, labelled with the layers that have it.

Cases (training mode, batch statistics, running-stat update):

* ``forward``           y = layer(x) with autograd recording (as in training);
* ``forward_backward``  the forward, then grads of (x, weight, bias);
* ``double_backward``   gx = grad(y, x, gy, create_graph=True), a penalty-like
                        scalar sum(gx²), then its grads w.r.t. (x, weight, bias,
                        gy) -- the gradient-penalty pattern; ``torch.compile``
                        cannot do double backward, so eager only;
* ``pass:<name>``       one kernel pass of the fast backends, with the bytes
                        it must move, for the effective bandwidth;
* ``copy``              ``torch.empty_like(x).copy_(x)``: the device copy
                        bandwidth the elementwise passes are compared with.

Parameters are float32 and x is float32 or bfloat16 (the autocast pattern).
See ``benchmarks/conftest.py`` for timing, memory and the record schema.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fastgan
from fastgan import _backend

OP = "batch_norm_act"
SLOPE = 0.2
ACT_LEAKY_RELU = 2  # kernel code of leaky_relu (fastgan._activation.ACTIVATIONS)
FASTGAN_IMPLS = ("cuda", "triton", "ref")

SHAPES = [
    ("G1-D3", (128, 512, 4, 4)),
    ("G2-D2", (128, 256, 8, 8)),
    ("G3-D1", (128, 128, 16, 16)),
    ("G4", (128, 64, 32, 32)),
]
SMOKE_SHAPES = [("tiny", (2, 4, 3, 3)), ("tiny-odd", (3, 5, 7, 7))]
DTYPES = SMOKE_DTYPES = (torch.float32, torch.bfloat16)

FWD_BWD_TARGETS = {"vs_eager": 1.5, "vs_compile": 1.0}
DOUBLE_TARGETS = {"vs_eager": 2.0}
BANDWIDTH_TARGETS = {"copy_fraction": 0.8}


def _layer(impl: str, channels: int, device, shape, dtype, compile_module):
    """The module measured for ``impl`` (parameters float32)."""
    if impl in FASTGAN_IMPLS:
        return fastgan.nn.BatchNormAct2d(channels, activation="leaky_relu", negative_slope=SLOPE,
                                         impl=impl).to(device)
    torch.manual_seed(0)
    eager = nn.Sequential(nn.BatchNorm2d(channels), nn.LeakyReLU(SLOPE)).to(device)
    if impl == "eager":
        return eager
    if impl == "compile":
        return compile_module(eager, (OP, tuple(shape), str(dtype)))
    raise ValueError(impl)


def _inputs(shape, dtype, device, grad_of_gy: bool = False):
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    gy = torch.randn(shape, device=device, dtype=dtype, requires_grad=grad_of_gy)
    return x, gy


def _targets(impl, targets):
    return targets if impl in ("cuda", "triton") else None


# ----------------------------------------------------------------------------- reference bandwidth


@pytest.mark.impls("copy")
def test_copy(bench, device, label, shape, dtype):
    x = torch.randn(shape, device=device, dtype=dtype)
    bench(lambda: torch.empty_like(x).copy_(x), op="device_copy", case="copy", shape=shape, dtype=dtype,
          impl="copy", variant=label, bytes_moved=2 * x.numel() * x.element_size())


def test_copy_peak(bench, device, smoke, dtype):
    """A large copy: the device's copy bandwidth at full occupancy."""
    numel = 2**12 if smoke else 2**26  # 256 MiB of float32
    x = torch.randn(numel, device=device, dtype=dtype)
    bench(lambda: torch.empty_like(x).copy_(x), op="device_copy", case="copy", shape=x.shape, dtype=dtype,
          impl="copy", variant="peak", bytes_moved=2 * x.numel() * x.element_size())


# ----------------------------------------------------------------------------- whole op


def test_forward_backward(bench, device, compile_module, impl, label, shape, dtype):
    layer = _layer(impl, shape[1], device, shape, dtype, compile_module)
    x, gy = _inputs(shape, dtype, device)
    wrt = [x, *layer.parameters()]
    bench(lambda: torch.autograd.grad(layer(x), wrt, gy), op=OP, case="forward_backward", shape=shape,
          dtype=dtype, impl=impl, variant=label, targets=_targets(impl, FWD_BWD_TARGETS))


@pytest.mark.impls("fastgan", "eager")
def test_double_backward(bench, device, impl, label, shape, dtype):
    layer = _layer(impl, shape[1], device, shape, dtype, None)
    x, gy = _inputs(shape, dtype, device, grad_of_gy=True)
    wrt = [x, *layer.parameters(), gy]

    def penalty_step():
        (gx,) = torch.autograd.grad(layer(x), x, gy, create_graph=True)
        penalty = gx.float().square().sum()
        return torch.autograd.grad(penalty, wrt)

    bench(penalty_step, op=OP, case="double_backward", shape=shape, dtype=dtype, impl=impl, variant=label,
          targets=_targets(impl, DOUBLE_TARGETS))


def test_forward(bench, device, compile_module, impl, label, shape, dtype):
    layer = _layer(impl, shape[1], device, shape, dtype, compile_module)
    x, _ = _inputs(shape, dtype, device)
    bench(lambda: layer(x), op=OP, case="forward", shape=shape, dtype=dtype, impl=impl, variant=label)


# ----------------------------------------------------------------------------- single passes

# name -> (big tensors read + written, is an elementwise pass)
PASSES = {
    "stats": (1, False),
    "forward_apply": (2, True),
    "backward_reduce": (2, False),
    "backward_apply": (3, True),
    "double_reduce": (3, False),
    "double_apply": (5, True),
}


@pytest.mark.impls("cuda", "triton")
@pytest.mark.parametrize("pass_name", list(PASSES))
def test_pass(bench, device, impl, label, shape, dtype, pass_name):
    k = _backend.kernels(impl, OP)
    # "stats": what a training forward runs, the statistics with the affine tables and running-stat
    # update from their merge kernel
    kernel = {"stats": "channel_stats_affine", "forward_apply": "norm_act_forward"}.get(pass_name,
                                                                                        f"norm_act_{pass_name}")
    try:
        fn = getattr(k, kernel)
    except (AttributeError, RuntimeError):
        pytest.skip(f"the {impl} backend has no kernel {kernel!r}")
    x = torch.randn(shape, device=device, dtype=dtype)
    gy = torch.randn_like(x)
    u = torch.randn_like(x)
    c = shape[1]
    var, mean = torch.var_mean(x.float().transpose(0, 1).reshape(c, -1), dim=1, unbiased=False)
    invstd = torch.rsqrt(var + 1e-5)
    scale = (torch.rand(c, device=device) + 0.5) * invstd
    shift = torch.randn(c, device=device) - mean * scale
    coef = [torch.randn(c, device=device) for _ in range(7)]
    per_channel = (scale, shift, mean, invstd)
    args = {
        "stats": (x, scale, shift, torch.zeros(c, device=device), torch.ones(c, device=device), 0.1, 1e-5),
        "forward_apply": (x, scale, shift, ACT_LEAKY_RELU, SLOPE),
        "backward_reduce": (gy, x, *per_channel, ACT_LEAKY_RELU, SLOPE),
        "backward_apply": (gy, x, *per_channel, *coef[:3], ACT_LEAKY_RELU, SLOPE),
        "double_reduce": (u, gy, x, *per_channel, ACT_LEAKY_RELU, SLOPE),
        "double_apply": (u, gy, x, *per_channel, *coef, ACT_LEAKY_RELU, SLOPE),
    }[pass_name]
    tensors, elementwise = PASSES[pass_name]
    bench(lambda: fn(*args), op=OP, case=f"pass:{pass_name}", shape=shape, dtype=dtype, impl=impl,
          variant=label, bytes_moved=tensors * x.numel() * x.element_size(),
          targets=BANDWIDTH_TARGETS if elementwise else None)
