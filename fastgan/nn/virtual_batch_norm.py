"""Virtual batch normalization modules and the reference-pass context manager.

Usage (the paper's: a fixed reference batch, passed through the network with
the current weights at every step, in the same graph as the live batch)::

    with fastgan.nn.virtual_batch_reference(generator):
        generator(z_ref)                 # records every VBN layer's statistics
    fake = generator(z)                  # normalised against them

Gradients flow from the live batch into the recorded statistics and through
the reference batch into earlier layers, as in the authors' code; the
recorded statistics (and the graph behind them) are kept until the next
reference pass.  ``detach_reference=True`` stops those gradients (and frees
the graph), for reusing one reference pass over several steps.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from .._activation import activation_code, activation_repr
from ..ops.virtual_batch_norm import virtual_batch_norm, virtual_batch_reference_stats
from ._checks import check_eps, check_impl, check_input_rank, positive_int


class _VirtualBatchNorm(nn.Module):
    _expected_dims: tuple = ()

    def __init__(self, num_features: int, eps: float = 1e-5, activation: str = "identity",
                 negative_slope: float = 0.2, detach_reference: bool = False, impl: str = "auto",
                 device=None, dtype=None):
        super().__init__()
        activation_code(activation, negative_slope)
        self.num_features, self.eps = positive_int("num_features", num_features), check_eps(eps)
        self.activation, self.negative_slope = activation, negative_slope
        self.detach_reference, self.impl = detach_reference, check_impl(impl)
        # The authors' code: gamma ~ N(1, 0.02), beta = 0.
        self.weight = nn.Parameter(torch.empty(num_features, device=device, dtype=dtype).normal_(1.0, 0.02))
        self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))
        self._recording = False
        self._recorded = False
        self.reference = None  # (ref_mean, ref_sq_mean, ref_count) of the last reference pass

    def _check_input(self, x: torch.Tensor) -> None:
        check_input_rank(type(self).__name__, x, self._expected_dims)
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}): x has {x.shape[1]} channels")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        common = dict(weight=self.weight, bias=self.bias, eps=self.eps, activation=self.activation,
                      negative_slope=self.negative_slope, impl=self.impl)
        if self._recording:
            mean, sq_mean = virtual_batch_reference_stats(x, impl=self.impl)
            if self.detach_reference:
                mean, sq_mean = mean.detach(), sq_mean.detach()
            self.reference = (mean, sq_mean, x.shape[0])
            self._recorded = True
            return virtual_batch_norm(x, mean, sq_mean, x.shape[0], reference_batch=True, **common)
        if self.reference is None:
            raise RuntimeError(f"{type(self).__name__} was used before any reference pass: run the reference "
                               "batch through the model inside `with fastgan.nn.virtual_batch_reference(model):` "
                               "first")
        mean, sq_mean, count = self.reference
        if mean.device != x.device:
            raise ValueError(f"{type(self).__name__}: the recorded reference statistics are on {mean.device} "
                             f"but x is on {x.device}; run the reference pass again after moving the model")
        return virtual_batch_norm(x, mean, sq_mean, count, **common)

    def __getstate__(self):
        # A copy (copy.deepcopy, pickle) keeps the recorded statistics' values, not the graph behind them: that
        # graph reaches the original's weights, and a tensor inside a graph cannot be deep-copied.
        state = super().__getstate__()
        if self.reference is not None:
            mean, sq_mean, count = self.reference
            state["reference"] = (mean.detach(), sq_mean.detach(), count)
        return state

    def extra_repr(self) -> str:
        detach = ", detach_reference=True" if self.detach_reference else ""
        return f"{self.num_features}, eps={self.eps}, {activation_repr(self)}{detach}"


class VirtualBatchNorm2d(_VirtualBatchNorm):
    """Virtual batch norm (+ activation) for (N, C, H, W): each batch normalised with the statistics of a
    fixed reference batch recorded by a pass inside :func:`virtual_batch_reference` (see the module
    docstring; a live pass before any reference pass raises).  Default activation ``"identity"``;
    ``detach_reference=True`` keeps no graph through the reference statistics."""
    _expected_dims = (4,)


class VirtualBatchNorm1d(_VirtualBatchNorm):
    """Virtual batch norm (+ activation) for (N, C) or (N, C, L); as :class:`VirtualBatchNorm2d`."""
    _expected_dims = (2, 3)


@contextlib.contextmanager
def virtual_batch_reference(model: nn.Module):
    """Inside this block, forward passes record every VBN layer's reference statistics."""
    layers = [m for m in model.modules() if isinstance(m, _VirtualBatchNorm)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no VirtualBatchNorm layers")
    for layer in layers:
        layer._recording, layer._recorded = True, False
    try:
        yield model
    finally:
        for layer in layers:
            layer._recording = False
    missing = [name for name, m in model.named_modules() if isinstance(m, _VirtualBatchNorm) and not m._recorded]
    if missing:
        raise RuntimeError(f"the reference pass did not reach these VirtualBatchNorm layers: {missing}")
