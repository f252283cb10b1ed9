"""``SyncBatchNormAct``: fused batch norm + activation with statistics over a ``torch.distributed`` group.

The module twin of ``nn.SyncBatchNorm`` (same constructor order, with
``process_group`` after ``track_running_stats``; same parameter and buffer
names as ``nn.BatchNorm2d``, so state dicts load both ways) plus
``activation``, ``negative_slope`` and ``impl``.  Outside an initialised
process group, or in a group of one, and in eval mode (even without running
statistics, as ``nn.SyncBatchNorm``) it is a plain ``BatchNormAct``: no
collective runs, so one rank alone may sample in eval mode.
``convert_sync(model)`` swaps every fused ``BatchNormAct`` of a model for
this module, keeping the very parameter and buffer objects (optimisers built
before stay valid), like ``nn.SyncBatchNorm.convert_sync_batchnorm``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops.sync_batch_norm_act import sync_batch_norm_act
from ._from_torch import placement
from .batch_norm_act import BatchNormAct2d, _BatchNormAct, batch_norm_step


class SyncBatchNormAct(_BatchNormAct):
    """BatchNorm + activation, fused, with batch statistics of every rank.  x: (N, C, *spatial)."""
    _expected_dims = (2, 3, 4, 5)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None, device=None, dtype=None,
                 activation: str = "leaky_relu", negative_slope: float = 0.2, impl: str = "auto"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         activation=activation, negative_slope=negative_slope, impl=impl)
        self.process_group = process_group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:  # as nn.SyncBatchNorm: no collective in eval mode (rank-0-only sampling)
            return super().forward(x)
        if getattr(self, "segments", 1) != 1:
            raise ValueError(f"{type(self).__name__}: per-segment statistics (segments={self.segments}) are not "
                             "supported with synchronised batch statistics")
        self._check_input_dim(x)
        running_mean, running_var, use_batch_stats, factor = batch_norm_step(self)
        return sync_batch_norm_act(x, running_mean, running_var, self.weight, self.bias, use_batch_stats, factor,
                                   self.eps, self.activation, self.negative_slope, self.process_group,
                                   impl=self.impl)


class SyncBatchNormAct1d(SyncBatchNormAct):
    """Synchronized ``BatchNormAct1d``.  x: (N, C) or (N, C, L)."""
    _expected_dims = (2, 3)


class SyncBatchNormAct2d(SyncBatchNormAct):
    """Synchronized ``BatchNormAct2d``.  x: (N, C, H, W)."""
    _expected_dims = (4,)


def _sync_twin(module: _BatchNormAct, process_group) -> SyncBatchNormAct:
    cls = SyncBatchNormAct2d if isinstance(module, BatchNormAct2d) else SyncBatchNormAct1d
    out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
              process_group, **placement(module), activation=module.activation,
              negative_slope=module.negative_slope, impl=module.impl)
    if module.affine:  # the same Parameter objects: optimisers and DDP built on them keep working
        out.weight, out.bias = module.weight, module.bias
    out.running_mean, out.running_var = module.running_mean, module.running_var
    out.num_batches_tracked = module.num_batches_tracked
    out.train(module.training)
    if hasattr(module, "qconfig"):
        out.qconfig = module.qconfig
    return out


def convert_sync(module: nn.Module, process_group=None) -> nn.Module:
    """Every fused ``BatchNormAct`` of ``module`` (itself included) becomes a ``SyncBatchNormAct``.

    Weights, buffers and train / eval mode are kept (the same tensors);
    plain ``nn.BatchNorm`` layers are left alone (``fastgan.convert(model,
    sync=True)`` fuses them first).  Returns the converted module."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    out = module
    if isinstance(module, _BatchNormAct) and not isinstance(module, SyncBatchNormAct):
        out = _sync_twin(module, process_group)
    for name, child in module.named_children():
        out.add_module(name, convert_sync(child, process_group))
    return out
