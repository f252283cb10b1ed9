"""Fused GroupNorm / InstanceNorm / LayerNorm + LeakyReLU(0.2) against PyTorch.

The three per-sample norms a WGAN-GP critic uses (issue 3), each fused with
the activation, against the PyTorch composition ``norm -> nn.LeakyReLU(0.2)``
in eager mode and under ``torch.compile``:

* ``group``    ``fastgan.nn.GroupNormAct(32, C)`` vs ``nn.GroupNorm(32, C)``
               (op ``group_norm_act``; the variant names the group count);
* ``instance`` ``fastgan.nn.InstanceNormAct2d(C, affine=True)`` vs
               ``nn.InstanceNorm2d(C, affine=True)`` (op ``instance_norm_act``;
               affine as in ``fastgan.models``' critic);
* ``layer``    ``fastgan.nn.LayerNormAct2d(C)`` vs ``nn.GroupNorm(1, C)``, the
               WGAN-GP code's "layer norm" (op ``layer_norm_act``).

Shapes are the normalised layers of the DCGAN-64 critic (ndf = 64; the first
conv, 64x32x32, has no norm): D1 = 128x16x16, D2 = 256x8x8, D3 = 512x4x4 (the
same layers as ``bench_batch_norm_act.py``), at batch 64 (the WGAN-GP batch)
and, for D1, 128 (the DCGAN batch).  To keep the GPU suite short not every
(norm, shape, dtype) is measured on the GPU (``measured_on_gpu``): group
norm on all four shapes in float32 and on D1-b64 in bfloat16; instance norm
on D1-b64 and D3-b64 (16-element rows) and layer norm on D1-b64, float32
(the three norms run the same fastgan kernels).  The CPU smoke run covers
every combination at a tiny size (under the Triton interpreter, group norm
only).

Cases (training mode):

* ``forward``           y = layer(x) with autograd recording;
* ``forward_backward``  the forward, then grads of (x, weight, bias);
* ``double_backward``   gx = grad(y, x, gy, create_graph=True), the penalty-like
                        scalar sum(gx^2), then its grads w.r.t. (x, weight,
                        bias, gy): the gradient-penalty pattern.  Eager only
                        (``torch.compile`` cannot do double backward).

dtypes: fastgan keeps float32 parameters and takes x in float32 or bfloat16.
The PyTorch baselines hold their parameters in x's dtype: ``nn.GroupNorm``'s
CUDA kernel has no bfloat16-input / float32-parameter variant (the CPU one
has), and the parameters are a negligible part of the traffic.

Targets (issue 3, H100): forward+backward at least 1.5x eager and 1.0x
``torch.compile``, double backward at least 2x eager.  See
``benchmarks/conftest.py`` for timing, memory and the record schema.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fastgan

SLOPE = 0.2
FASTGAN_IMPLS = ("cuda", "triton", "ref")
OPS = {"group": "group_norm_act", "instance": "instance_norm_act", "layer": "layer_norm_act"}
KINDS = tuple(OPS)

SHAPES = [
    ("D1-b64", (64, 128, 16, 16)),
    ("D2-b64", (64, 256, 8, 8)),
    ("D3-b64", (64, 512, 4, 4)),
    ("D1-b128", (128, 128, 16, 16)),
]
SMOKE_SHAPES = [("tiny", (2, 4, 3, 3))]  # 2 groups of 2 channels, odd spatial size
DTYPES = SMOKE_DTYPES = (torch.float32, torch.bfloat16)

FWD_BWD_TARGETS = {"vs_eager": 1.5, "vs_compile": 1.0}
DOUBLE_TARGETS = {"vs_eager": 2.0}


def measured_on_gpu(kind: str, label: str, dtype) -> bool:
    """The (norm, shape, dtype) combinations the GPU suite measures (see the module docstring)."""
    if kind == "group":
        return dtype == torch.float32 or label == "D1-b64"
    if dtype != torch.float32:
        return False
    return label in (("D1-b64", "D3-b64") if kind == "instance" else ("D1-b64",))


def _select(smoke: bool, kind: str, impl: str, label: str, dtype) -> None:
    if not smoke and not measured_on_gpu(kind, label, dtype):
        pytest.skip(f"{kind} norm on {label} {dtype} is not in the GPU selection (suite time budget)")
    if smoke and impl == "triton" and kind != "group":
        # The interpreter costs seconds per case; the three norms share the same kernels.
        pytest.skip("CPU smoke: under the Triton interpreter only group norm runs (same kernels)")


def num_groups(kind: str, channels: int) -> int:
    if kind == "layer":
        return 1
    if kind == "instance":
        return channels
    return 32 if channels % 32 == 0 else (2 if channels % 2 == 0 else 1)  # smoke sizes: 2 groups


def _variant(kind: str, label: str, channels: int) -> str:
    return f"{label} G{num_groups(kind, channels)}" if kind == "group" else label


def _layer(kind: str, impl: str, channels: int, device, shape, dtype, compile_module):
    """The module measured for ``impl`` (fastgan: float32 parameters)."""
    act = dict(activation="leaky_relu", negative_slope=SLOPE)
    if impl in FASTGAN_IMPLS:
        if kind == "group":
            layer = fastgan.nn.GroupNormAct(num_groups(kind, channels), channels, impl=impl, **act)
        elif kind == "instance":
            layer = fastgan.nn.InstanceNormAct2d(channels, affine=True, impl=impl, **act)
        else:
            layer = fastgan.nn.LayerNormAct2d(channels, impl=impl, **act)
        return layer.to(device)
    torch.manual_seed(0)
    norm = (nn.InstanceNorm2d(channels, affine=True) if kind == "instance"
            else nn.GroupNorm(num_groups(kind, channels), channels))
    eager = nn.Sequential(norm, nn.LeakyReLU(SLOPE)).to(device=device, dtype=dtype)
    if impl == "eager":
        return eager
    if impl == "compile":
        return compile_module(eager, (OPS[kind], tuple(shape), str(dtype)))
    raise ValueError(impl)


def _inputs(shape, dtype, device, grad_of_gy: bool = False):
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    gy = torch.randn(shape, device=device, dtype=dtype, requires_grad=grad_of_gy)
    return x, gy


def _targets(impl, targets):
    return targets if impl in ("cuda", "triton") else None


# Forward + backward first: the cases with targets come first if the suite's time limit cuts the file.
@pytest.mark.parametrize("kind", KINDS)
def test_forward_backward(bench, device, smoke, compile_module, kind, impl, label, shape, dtype):
    _select(smoke, kind, impl, label, dtype)
    layer = _layer(kind, impl, shape[1], device, shape, dtype, compile_module)
    x, gy = _inputs(shape, dtype, device)
    wrt = [x, *layer.parameters()]
    bench(lambda: torch.autograd.grad(layer(x), wrt, gy), op=OPS[kind], case="forward_backward", shape=shape,
          dtype=dtype, impl=impl, variant=_variant(kind, label, shape[1]), targets=_targets(impl, FWD_BWD_TARGETS))


@pytest.mark.impls("fastgan", "eager")
@pytest.mark.parametrize("kind", KINDS)
def test_double_backward(bench, device, smoke, kind, impl, label, shape, dtype):
    _select(smoke, kind, impl, label, dtype)
    layer = _layer(kind, impl, shape[1], device, shape, dtype, None)
    x, gy = _inputs(shape, dtype, device, grad_of_gy=True)
    wrt = [x, *layer.parameters(), gy]

    def penalty_step():
        (gx,) = torch.autograd.grad(layer(x), x, gy, create_graph=True)
        penalty = gx.float().square().sum()
        return torch.autograd.grad(penalty, wrt)

    bench(penalty_step, op=OPS[kind], case="double_backward", shape=shape, dtype=dtype, impl=impl,
          variant=_variant(kind, label, shape[1]), targets=_targets(impl, DOUBLE_TARGETS))


@pytest.mark.parametrize("kind", KINDS)
def test_forward(bench, device, smoke, compile_module, kind, impl, label, shape, dtype):
    _select(smoke, kind, impl, label, dtype)
    layer = _layer(kind, impl, shape[1], device, shape, dtype, compile_module)
    x, _ = _inputs(shape, dtype, device)
    bench(lambda: layer(x), op=OPS[kind], case="forward", shape=shape, dtype=dtype, impl=impl,
          variant=_variant(kind, label, shape[1]))
