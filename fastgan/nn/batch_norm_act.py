"""Drop-in fused BatchNorm + activation modules.

Same constructor order, parameters and buffers as ``nn.BatchNorm1d/2d`` (so a
``state_dict`` loads both ways), plus ``activation``, ``negative_slope`` and
``impl``.  They derive from ``_NormBase``, not ``_BatchNorm``, on purpose:
``nn.SyncBatchNorm.convert_sync_batchnorm`` would otherwise silently replace
them with a SyncBatchNorm that drops the activation.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from .._activation import activation_code, activation_repr
from ..ops.batch_norm_act import batch_norm_act
from ._checks import check_eps, check_impl, check_input_rank, check_momentum, positive_int
from ._from_torch import drop_bias, placement, take_over


def batch_norm_step(bn: _NormBase):
    """Running-stat bookkeeping exactly as ``nn.BatchNorm`` does it, for one forward.

    Returns (running_mean, running_var, use_batch_stats, momentum factor) to
    pass to the functional op; increments ``num_batches_tracked``."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        # a batch of ``segments`` parts normalised each alone counts as that many batches
        bn.num_batches_tracked.add_(getattr(bn, "segments", 1))
        if bn.momentum is None:  # cumulative moving average
            factor = 1.0 / float(bn.num_batches_tracked)
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    return (bn.running_mean if track else None, bn.running_var if track else None, use_batch_stats, factor)


class _BatchNormAct(_NormBase):
    _expected_dims: tuple = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None,
                 activation: str = "leaky_relu", negative_slope: float = 0.2, impl: str = "auto", *,
                 bias: bool = True):
        activation_code(activation, negative_slope)  # validate early
        positive_int("num_features", num_features)
        check_eps(eps)
        check_momentum(momentum)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        drop_bias(self, bias)
        self.activation = activation
        self.negative_slope = negative_slope
        self.impl = check_impl(impl)
        # Equal parts of the batch normalised each with its own statistics (set by
        # fastgan.nn.separate_batches for one pass over real and fake images); not state.
        self.segments = 1

    def __getstate__(self):
        # segments belongs to a separate_batches block, not to the layer: a copy made inside one (deepcopy,
        # pickle) is a plain layer, as the original is again after the block
        state = super().__getstate__()
        state["segments"] = 1
        return state

    def _check_input_dim(self, x: torch.Tensor) -> None:
        check_input_rank(type(self).__name__, x, self._expected_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        segments = getattr(self, "segments", 1)  # (a module pickled before the attribute existed)
        if segments != 1 and self.momentum is None and self.training and self.track_running_stats:
            raise ValueError(f"{type(self).__name__}: segments={segments} needs a momentum: momentum=None "
                             "(a cumulative average) would need a factor per segment")
        if self.momentum is None and self.training and self.track_running_stats and torch.compiler.is_compiling():
            return self._cumulative_average_compiled(x)
        running_mean, running_var, use_batch_stats, factor = batch_norm_step(self)
        return batch_norm_act(x, running_mean, running_var, self.weight, self.bias, use_batch_stats, factor,
                              self.eps, self.activation, self.negative_slope, impl=self.impl, segments=segments)

    def _cumulative_average_compiled(self, x: torch.Tensor) -> torch.Tensor:
        """momentum=None (a cumulative average) under torch.compile: its factor 1 / num_batches_tracked as a
        Python float changed every step, and the op's float argument made each step a recompile (until the
        recompile limit, then eager).  Here the factor stays a tensor: the layer runs on batch statistics
        without running stats, and the update is tensor ops on the batch's own (unbiased) statistics."""
        self.num_batches_tracked.add_(1)
        y = batch_norm_act(x, None, None, self.weight, self.bias, True, 0.0, self.eps, self.activation,
                           self.negative_slope, impl=self.impl)
        with torch.no_grad():
            dims = [0] + list(range(2, x.dim()))
            var, mean = torch.var_mean(x.detach().to(torch.float64 if x.dtype == torch.float64 else torch.float32),
                                       dim=dims, correction=1)
            factor = 1.0 / self.num_batches_tracked.to(mean.dtype)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor.to(self.running_mean.dtype))
            self.running_var.lerp_(var.to(self.running_var.dtype), factor.to(self.running_var.dtype))
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {activation_repr(self)}"


class BatchNormAct2d(_BatchNormAct):
    """``nn.BatchNorm2d`` followed by an activation, fused.  x: (N, C, H, W).

    ``nn.BatchNorm2d``'s arguments (``bias=False`` too), then ``activation`` -- by default
    ``"leaky_relu"`` with ``negative_slope`` 0.2, a DCGAN discriminator's; ``"relu"`` for a
    generator, ``"identity"`` for the plain layer -- and ``impl`` (``"auto" | "ref" | "triton" |
    "cuda"``).  ``momentum=None`` is the cumulative average, as torch's."""
    _expected_dims = (4,)


class BatchNormAct1d(_BatchNormAct):
    """``nn.BatchNorm1d`` followed by an activation, fused.  x: (N, C) or (N, C, L).  Arguments as
    :class:`BatchNormAct2d`'s (default activation ``"leaky_relu"``, slope 0.2)."""
    _expected_dims = (2, 3)


class BatchNormLeakyReLU2d(BatchNormAct2d):
    """BatchNorm2d + LeakyReLU(negative_slope), fused."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 device=None, dtype=None, negative_slope: float = 0.2, impl: str = "auto"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         activation="leaky_relu", negative_slope=negative_slope, impl=impl)


class BatchNormReLU2d(BatchNormAct2d):
    """BatchNorm2d + ReLU, fused."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 device=None, dtype=None, impl: str = "auto"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         activation="relu", impl=impl)


def from_batch_norm(bn: nn.modules.batchnorm._BatchNorm, activation: str = "identity",
                    negative_slope: float = 0.2, impl: str = "auto") -> _BatchNormAct:
    """A fused module with ``bn``'s configuration, weights, buffers and mode."""
    cls = BatchNormAct2d if isinstance(bn, nn.BatchNorm2d) else BatchNormAct1d
    fused = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, **placement(bn),
                activation=activation, negative_slope=negative_slope, impl=impl, bias=bn.bias is not None)
    return take_over(bn, fused)

