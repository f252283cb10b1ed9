"""Minibatch discrimination against the materialising PyTorch layer.

The baseline is the layer every public implementation uses: it builds the
N x N x B x C difference tensor, ``exp(-|M_i - M_j|_1)`` summed over j
(eager, and ``torch.compile`` for the forward and forward+backward).
fastgan's fused kernels never build it (memory O(N*B*C)).

Shapes (N, B, C): the DCGAN discriminator's layer at batch 64 / 128 / 256
with the paper's CIFAR setting B = 100 kernels of C = 5 dimensions, N = 1024,
and the paper's ImageNet setting B = 300, C = 50.  The baseline is skipped
where its pair tensor alone would exceed ``NAIVE_LIMIT_BYTES``.

Cases:

* ``forward``           o = mbd(M), M requiring grad (as in training);
* ``forward_backward``  the forward, then dM for a given dL/do;
* ``double_backward``   dM = grad(o, M, g, create_graph=True), a penalty-like
                        scalar sum(dM^2), then its grads w.r.t. (M, g) -- the
                        gradient-penalty pattern (eager only: ``torch.compile``
                        cannot do double backward);
* ``pass:<name>``       one kernel of the fast backends, with its pair-op count
                        in ``notes`` (the compute floor: the kernels are
                        compute bound, ~2C FP32 ops per pair (i, j, b) forward,
                        ~6C backward, ~10C double backward, plus one exp).

Target from the issue: forward+backward at least 10x faster than eager at
N = 256, B = 300, C = 50.  See ``benchmarks/conftest.py`` for timing, memory
and the record schema.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fastgan
from fastgan import _backend

OP = "minibatch_discrimination"
FASTGAN_IMPLS = ("cuda", "triton", "ref")
NAIVE_LIMIT_BYTES = 8 * 2**30

SHAPES = [
    ("dcgan-b64", (64, 100, 5)),
    ("dcgan-b128", (128, 100, 5)),
    ("dcgan-b256", (256, 100, 5)),
    ("b1024", (1024, 100, 5)),
    ("imagenet-b64", (64, 300, 50)),
    ("imagenet-b256", (256, 300, 50)),
    ("imagenet-b1024", (1024, 300, 50)),
]
SMOKE_SHAPES = [("tiny", (6, 3, 4)), ("tiny-odd", (9, 2, 3))]
DTYPES = (torch.float32,)
SMOKE_DTYPES = (torch.float32, torch.bfloat16)

# Ops per pair (i, j, b) and dimension c of each kernel (see the module docstring).
PASS_OPS_PER_PAIR_C = {"forward": 2, "backward": 6, "double_backward": 10}


class NaiveMinibatchDiscrimination(nn.Module):
    """The materialising layer: the (N, N, B, C) difference tensor, in M's dtype."""

    def __init__(self, exclude_self: bool = False):
        super().__init__()
        self.exclude_self = exclude_self

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        o = torch.exp(-(m.unsqueeze(1) - m.unsqueeze(0)).abs().sum(dim=-1)).sum(dim=1)
        return o - 1 if self.exclude_self else o


def _layer(impl: str, shape, dtype, compile_module):
    if impl in FASTGAN_IMPLS:
        return lambda m: fastgan.ops.minibatch_discrimination(m, impl=impl)
    n, b, c = shape
    if n * n * b * c * torch.empty((), dtype=dtype).element_size() > NAIVE_LIMIT_BYTES:
        pytest.skip(f"the naive pair tensor of {shape} exceeds {NAIVE_LIMIT_BYTES / 2**30:.0f} GiB")
    naive = NaiveMinibatchDiscrimination()
    if impl == "eager":
        return naive
    if impl == "compile":
        return compile_module(naive, (OP, tuple(shape), str(dtype)))
    raise ValueError(impl)


def _inputs(shape, dtype, device, grad_of_g: bool = False):
    m = (torch.randn(shape, device=device, dtype=torch.float32) * 0.5).to(dtype).requires_grad_()
    g = torch.randn(shape[:2], device=device, dtype=dtype, requires_grad=grad_of_g)
    return m, g


def _targets(impl, label, case):
    if impl in ("cuda", "triton") and label == "imagenet-b256" and case == "forward_backward":
        return {"vs_eager": 10.0}
    return None


def test_forward(bench, device, compile_module, impl, label, shape, dtype):
    layer = _layer(impl, shape, dtype, compile_module)
    m, _ = _inputs(shape, dtype, device)
    bench(lambda: layer(m), op=OP, case="forward", shape=shape, dtype=dtype, impl=impl, variant=label)


def test_forward_backward(bench, device, compile_module, impl, label, shape, dtype):
    layer = _layer(impl, shape, dtype, compile_module)
    m, g = _inputs(shape, dtype, device)
    bench(lambda: torch.autograd.grad(layer(m), m, g), op=OP, case="forward_backward", shape=shape, dtype=dtype,
          impl=impl, variant=label, targets=_targets(impl, label, "forward_backward"))


@pytest.mark.impls("fastgan", "eager")
def test_double_backward(bench, device, impl, label, shape, dtype):
    layer = _layer(impl, shape, dtype, None)
    m, g = _inputs(shape, dtype, device, grad_of_g=True)

    def penalty_step():
        (dm,) = torch.autograd.grad(layer(m), m, g, create_graph=True)
        penalty = dm.float().square().sum()
        return torch.autograd.grad(penalty, (m, g))

    bench(penalty_step, op=OP, case="double_backward", shape=shape, dtype=dtype, impl=impl, variant=label)


@pytest.mark.impls("cuda", "triton")
@pytest.mark.parametrize("pass_name", list(PASS_OPS_PER_PAIR_C))
def test_pass(bench, device, impl, label, shape, dtype, pass_name):
    if impl == "cuda" and _backend.cuda_reason_unusable(device):
        pytest.skip("fastgan._C unavailable")
    k = _backend.kernels(impl, OP)
    m, g = _inputs(shape, dtype, device)
    m = m.detach()
    u = torch.randn_like(m)
    calls = {
        "forward": lambda: k.mbd_forward(m, False),
        "backward": lambda: k.mbd_backward(g, m),
        "double_backward": lambda: k.mbd_double_backward(u, g, m),
    }
    n, b, c = shape
    ops = n * n * b * c * PASS_OPS_PER_PAIR_C[pass_name]
    bench(calls[pass_name], op=OP, case=f"pass:{pass_name}", shape=shape, dtype=dtype, impl=impl, variant=label,
          notes=f"fp32_ops={ops} (compute floor = fp32_ops / peak FP32 FLOP/s; plus {n * n * b} exp)")
