"""Fused PixelShuffle (+ BatchNorm | + bias) + LeakyReLU(0.2) against PyTorch.

The part of a ``fastgan.nn.PixelShuffleUpsample`` block after its conv
(issue 6): the conv output x (N, 4C, H, W) goes to y (N, C, 2H, 2W) through

* ``batch`` (op ``pixel_shuffle_batch_norm_act``): fused
  ``fastgan.ops.pixel_shuffle_batch_norm_act`` (training mode, batch statistics,
  running-stat update) vs ``nn.PixelShuffle(2) -> nn.BatchNorm2d(C) ->
  nn.LeakyReLU(0.2)``;
* ``bias`` (op ``pixel_shuffle_act``, the block without a norm): fused
  ``fastgan.ops.pixel_shuffle_act`` vs ``nn.PixelShuffle(2)``, ``+ bias``,
  ``nn.LeakyReLU(0.2)`` (the bias after the shuffle, as the fused op has it;
  an eager block could instead fold it into the conv and skip that pass).

The conv itself is the same on both sides and is not measured.  Baselines run
eager and under ``torch.compile``.  Where the op has no CUDA kernels (Triton
then serves CUDA tensors) the ``impl="cuda"`` cases skip with the op's reason.

Shapes are the upsampling blocks of the DCGAN-64 generator (ngf = 64) at batch
128, labelled by the feature map they produce: conv outputs (N, 4*256, 4, 4)
-> 256x8x8, (N, 4*128, 8, 8) -> 128x16x16, (N, 4*64, 16, 16) -> 64x32x32.
``shape`` is the conv output's.  On the GPU both blocks are measured on the
three shapes in float32, and the batch-norm block on the largest
(to-64x32x32) in bfloat16 (GPU suite time); the CPU smoke run covers both
dtypes for both (under the Triton interpreter, the batch-norm block only).
Parameters are float32.

Cases: ``forward`` (autograd recording), ``forward_backward`` (grads of x and
the parameters), ``double_backward`` (gx = grad(y, x, gy, create_graph=True),
sum(gx^2), its grads w.r.t. x, the parameters and gy; eager only).

Target (issue 6, H100), attached to forward+backward: at least 2x eager and
1.0x ``torch.compile``.  See ``benchmarks/conftest.py`` for timing, memory
and the record schema.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fastgan
from fastgan import _backend

SLOPE = 0.2
SCALE = 2
FASTGAN_IMPLS = ("cuda", "triton", "ref")
OPS = {"batch": "pixel_shuffle_batch_norm_act", "bias": "pixel_shuffle_act"}
NORMS = tuple(OPS)

SHAPES = [
    ("to-256x8x8", (128, 4 * 256, 4, 4)),
    ("to-128x16x16", (128, 4 * 128, 8, 8)),
    ("to-64x32x32", (128, 4 * 64, 16, 16)),
]
SMOKE_SHAPES = [("tiny", (2, 4 * 1, 3, 3))]  # one output channel: the interpreter pays per program
DTYPES = SMOKE_DTYPES = (torch.float32, torch.bfloat16)

TARGETS = {"vs_eager": 2.0, "vs_compile": 1.0}


def measured_on_gpu(norm: str, label: str, dtype) -> bool:
    """The (block, shape, dtype) combinations the GPU suite measures (see the module docstring)."""
    return dtype == torch.float32 or (norm == "batch" and label == "to-64x32x32")


def _select(smoke: bool, norm: str, impl: str, label: str, dtype) -> None:
    if not smoke and not measured_on_gpu(norm, label, dtype):
        pytest.skip(f"the {norm} block on {label} in {dtype} is not in the GPU selection (suite time budget)")
    if smoke and impl == "triton" and norm != "batch":
        # The interpreter costs seconds per case; both blocks run the same shuffle kernels.
        pytest.skip("CPU smoke: under the Triton interpreter only the batch-norm block runs (same kernels)")


class FusedShuffle(nn.Module):
    """The fused epilogue, parameters and running statistics as PixelShuffleUpsample holds them."""

    def __init__(self, norm: str, channels: int, impl: str):
        super().__init__()
        self.impl = impl
        if norm == "batch":
            self.norm = nn.BatchNorm2d(channels)
            self.register_parameter("bias", None)
        else:
            self.norm = None
            self.bias = nn.Parameter(torch.randn(channels) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is None:
            return fastgan.ops.pixel_shuffle_act(x, SCALE, self.bias, "leaky_relu", SLOPE, impl=self.impl)
        bn = self.norm
        return fastgan.ops.pixel_shuffle_batch_norm_act(x, SCALE, bn.running_mean, bn.running_var, bn.weight,
                                                        bn.bias, True, bn.momentum, bn.eps, "leaky_relu", SLOPE,
                                                        impl=self.impl)


class ShuffleBiasAct(nn.Module):
    """``nn.PixelShuffle`` + bias (in x's dtype) + ``nn.LeakyReLU``."""

    def __init__(self, channels: int):
        super().__init__()
        self.shuffle = nn.PixelShuffle(SCALE)
        self.bias = nn.Parameter(torch.randn(channels) * 0.1)
        self.act = nn.LeakyReLU(SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shuffle(x)
        return self.act(y + self.bias.to(y.dtype).view(1, -1, 1, 1))


def _skip_without_cuda_kernels(norm: str, impl: str, device) -> None:
    """Skip ``impl="cuda"`` (with the op's own reason) while the op has no CUDA kernels."""
    if impl != "cuda":
        return
    probe = torch.zeros(2, SCALE * SCALE, 1, 1, device=device)
    try:
        if norm == "bias":
            fastgan.ops.pixel_shuffle_act(probe, SCALE, impl=impl)
        else:
            fastgan.ops.pixel_shuffle_batch_norm_act(probe, SCALE, impl=impl)
    except _backend.BackendUnavailableError as exc:
        pytest.skip(str(exc))


def _layer(norm: str, impl: str, shape, device, dtype, compile_module):
    channels = shape[1] // SCALE ** 2
    torch.manual_seed(0)
    if impl in FASTGAN_IMPLS:
        _skip_without_cuda_kernels(norm, impl, device)
        return FusedShuffle(norm, channels, impl).to(device)
    if norm == "batch":
        eager = nn.Sequential(nn.PixelShuffle(SCALE), nn.BatchNorm2d(channels), nn.LeakyReLU(SLOPE))
    else:
        eager = ShuffleBiasAct(channels)
    eager = eager.to(device)
    if impl == "eager":
        return eager
    if impl == "compile":
        return compile_module(eager, (OPS[norm], tuple(shape), str(dtype)))
    raise ValueError(impl)


def _inputs(shape, dtype, device, grad_of_gy: bool = False):
    n, c, h, w = shape
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    gy = torch.randn((n, c // SCALE ** 2, h * SCALE, w * SCALE), device=device, dtype=dtype,
                     requires_grad=grad_of_gy)
    return x, gy


def _params(layer):
    return [p for p in layer.parameters() if p.requires_grad]


# Forward + backward first: the cases with targets come first if the suite's time limit cuts the file.
@pytest.mark.parametrize("norm", NORMS)
def test_forward_backward(bench, device, smoke, compile_module, norm, impl, label, shape, dtype):
    _select(smoke, norm, impl, label, dtype)
    layer = _layer(norm, impl, shape, device, dtype, compile_module)
    x, gy = _inputs(shape, dtype, device)
    wrt = [x, *_params(layer)]
    bench(lambda: torch.autograd.grad(layer(x), wrt, gy), op=OPS[norm], case="forward_backward", shape=shape,
          dtype=dtype, impl=impl, variant=label, targets=TARGETS if impl in ("cuda", "triton") else None)


@pytest.mark.impls("fastgan", "eager")
@pytest.mark.parametrize("norm", NORMS)
def test_double_backward(bench, device, smoke, norm, impl, label, shape, dtype):
    _select(smoke, norm, impl, label, dtype)
    layer = _layer(norm, impl, shape, device, dtype, None)
    x, gy = _inputs(shape, dtype, device, grad_of_gy=True)
    wrt = [x, *_params(layer), gy]

    def penalty_step():
        (gx,) = torch.autograd.grad(layer(x), x, gy, create_graph=True)
        penalty = gx.float().square().sum()
        return torch.autograd.grad(penalty, wrt)

    bench(penalty_step, op=OPS[norm], case="double_backward", shape=shape, dtype=dtype, impl=impl, variant=label)


@pytest.mark.parametrize("norm", NORMS)
def test_forward(bench, device, smoke, compile_module, norm, impl, label, shape, dtype):
    _select(smoke, norm, impl, label, dtype)
    layer = _layer(norm, impl, shape, device, dtype, compile_module)
    x, _ = _inputs(shape, dtype, device)
    bench(lambda: layer(x), op=OPS[norm], case="forward", shape=shape, dtype=dtype, impl=impl, variant=label)
