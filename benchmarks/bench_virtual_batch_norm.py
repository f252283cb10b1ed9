"""Fused virtual batch norm (+ ReLU) against its reference implementation.

Virtual batch normalization (issue 5) as a generator uses it at every step:
a *reference pass* (the reference batch's per-channel statistics, and the
reference batch normalised with them) and a *live pass* (each live example
normalised with its own spatial moments mixed with the reference statistics,
weight 1/(N_ref+1)), with gradients flowing from both outputs into x, the
reference batch (through the statistics), weight and bias.  PyTorch has no
VBN layer, so the baselines are ``fastgan.reference.virtual_batch_reference_stats``
+ ``fastgan.reference.virtual_batch_norm`` (the formula of the authors' code,
plain PyTorch), eager and under ``torch.compile``.  fastgan is
``fastgan.nn.VirtualBatchNorm2d`` inside ``fastgan.nn.virtual_batch_reference``.

Shapes are the normalised layers of the DCGAN-64 generator (ngf = 64):
G1 = 512x4x4, G2 = 256x8x8, G3 = 128x16x16, G4 = 64x32x32, live batch 128 (the
DCGAN batch) for all four and 64 for G1 (the smallest tensor, where fixed
costs weigh most; GPU suite time keeps it to one); the reference batch is 64
examples of the same layer (``REF_BATCH``).  ``shape`` is the live batch's.
The activation is ReLU (the DCGAN generator's).  On the GPU only float32 is
measured (GPU suite time); the CPU smoke run also runs bfloat16.

Cases (one generator step's worth of this layer):

* ``forward``           reference pass + live pass, autograd recording;
* ``forward_backward``  the same, then grads of (x_ref, x, weight, bias) for
                        given output gradients of both passes.

Target (issue 5, H100): forward+backward at least 2x the compiled reference.
See ``benchmarks/conftest.py`` for timing, memory and the record schema.
"""
from __future__ import annotations

import torch
from torch import nn

import fastgan
from fastgan import reference

OP = "virtual_batch_norm"
ACTIVATION = "relu"
EPS = 1e-5
FASTGAN_IMPLS = ("cuda", "triton", "ref")
REF_BATCH = 64
SMOKE_REF_BATCH = 3

SHAPES = [
    ("G1-b128", (128, 512, 4, 4)),
    ("G2-b128", (128, 256, 8, 8)),
    ("G3-b128", (128, 128, 16, 16)),
    ("G4-b128", (128, 64, 32, 32)),
    ("G1-b64", (64, 512, 4, 4)),
]
SMOKE_SHAPES = [("tiny", (2, 4, 3, 3))]
DTYPES = (torch.float32,)
SMOKE_DTYPES = (torch.float32, torch.bfloat16)

FWD_BWD_TARGETS = {"vs_compile": 2.0}


class FusedVBNStep(nn.Module):
    """Reference pass + live pass through one ``fastgan.nn.VirtualBatchNorm2d``."""

    def __init__(self, channels: int, impl: str):
        super().__init__()
        self.vbn = fastgan.nn.VirtualBatchNorm2d(channels, eps=EPS, activation=ACTIVATION, impl=impl)

    def forward(self, x_ref: torch.Tensor, x: torch.Tensor):
        with fastgan.nn.virtual_batch_reference(self.vbn):
            y_ref = self.vbn(x_ref)
        return y_ref, self.vbn(x)


class ReferenceVBNStep(nn.Module):
    """The same step written with ``fastgan.reference`` (plain PyTorch)."""

    def __init__(self, channels: int):
        super().__init__()
        # As VirtualBatchNorm2d: gamma ~ N(1, 0.02), beta = 0.
        self.weight = nn.Parameter(torch.empty(channels).normal_(1.0, 0.02))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x_ref: torch.Tensor, x: torch.Tensor):
        mean, sq_mean = reference.virtual_batch_reference_stats(x_ref)
        n_ref = x_ref.shape[0]
        common = dict(weight=self.weight, bias=self.bias, eps=EPS, activation=ACTIVATION)
        y_ref = reference.virtual_batch_norm(x_ref, mean, sq_mean, n_ref, reference_batch=True, **common)
        return y_ref, reference.virtual_batch_norm(x, mean, sq_mean, n_ref, **common)


def _ref_batch(smoke: bool) -> int:
    return SMOKE_REF_BATCH if smoke else REF_BATCH


def _step(impl: str, channels: int, device, shape, dtype, compile_module):
    """The module measured for ``impl`` (parameters float32)."""
    torch.manual_seed(0)
    if impl in FASTGAN_IMPLS:
        return FusedVBNStep(channels, impl).to(device)
    step = ReferenceVBNStep(channels).to(device)
    if impl == "eager":
        return step
    if impl == "compile":
        return compile_module(step, (OP, tuple(shape), str(dtype)))
    raise ValueError(impl)


def _inputs(shape, dtype, device, smoke: bool):
    ref_shape = (_ref_batch(smoke),) + tuple(shape[1:])
    x_ref = torch.randn(ref_shape, device=device, dtype=dtype, requires_grad=True)
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    gy_ref = torch.randn(ref_shape, device=device, dtype=dtype)
    gy = torch.randn(shape, device=device, dtype=dtype)
    return x_ref, x, gy_ref, gy


def _variant(label: str, smoke: bool) -> str:
    return f"{label} ref{_ref_batch(smoke)}"


def _targets(impl, targets):
    return targets if impl in ("cuda", "triton") else None


def test_forward_backward(bench, device, smoke, compile_module, impl, label, shape, dtype):
    step = _step(impl, shape[1], device, shape, dtype, compile_module)
    x_ref, x, gy_ref, gy = _inputs(shape, dtype, device, smoke)
    wrt = [x_ref, x, *step.parameters()]
    bench(lambda: torch.autograd.grad(step(x_ref, x), wrt, (gy_ref, gy)), op=OP, case="forward_backward",
          shape=shape, dtype=dtype, impl=impl, variant=_variant(label, smoke),
          targets=_targets(impl, FWD_BWD_TARGETS))


def test_forward(bench, device, smoke, compile_module, impl, label, shape, dtype):
    step = _step(impl, shape[1], device, shape, dtype, compile_module)
    x_ref, x, _, _ = _inputs(shape, dtype, device, smoke)
    bench(lambda: step(x_ref, x), op=OP, case="forward", shape=shape, dtype=dtype, impl=impl,
          variant=_variant(label, smoke))
