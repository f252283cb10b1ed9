"""Fake (meta) kernel of ``torch.ops.fastgan.stats_affine`` (csrc/stats_affine.cpp):
shapes and dtypes only, for torch.compile tracing and meta tensors."""
from __future__ import annotations

from typing import Callable

from ._fake_registry import register_fakes

__all__ = ["FAKES", "registered"]


def _stats_affine(mean, var, weight, bias, running_mean, running_var, count, momentum, eps):
    return mean.new_empty(mean.shape), mean.new_empty(mean.shape), mean.new_empty(mean.shape)


FAKES: dict[str, Callable] = {"stats_affine": _stats_affine}

registered: list[str] = register_fakes(FAKES)
