"""Fake (meta) kernels of the small coefficient ops: ``torch.ops.fastgan.stats_affine``,
``group_stats_affine`` (csrc/stats_affine.cpp), ``virtual_stats_affine`` and its backward
(csrc/virtual_stats_affine.cpp), ``norm_act_backward_coefficients``
(csrc/backward_coefficients.cpp) and ``norm_act_double_coefficients``
(csrc/double_coefficients.cpp):
shapes and dtypes only, for torch.compile tracing and meta tensors."""
from __future__ import annotations

from typing import Callable

from ._fake_registry import register_fakes

__all__ = ["FAKES", "registered"]


def _stats_affine(mean, var, weight, bias, running_mean, running_var, count, momentum, eps):
    return mean.new_empty(mean.shape), mean.new_empty(mean.shape), mean.new_empty(mean.shape)


def _group_stats_affine(row_mean, row_m2, weight, bias, groups, spatial, eps):
    return tuple(row_mean.new_empty(row_mean.shape) for _ in range(4))


def _virtual_stats_affine(own_mean, own_sq, ref_mean, ref_sq, weight, bias, mix, eps):
    like = ref_mean if own_mean is None else own_mean
    return like.new_empty(like.shape), like.new_empty(like.shape), like.new_empty((2,) + tuple(like.shape))


def _virtual_stats_affine_backward(g_scale, g_shift, own_mean, own_sq, ref_mean, ref_sq, weight, mix, eps):
    c = ref_mean.shape[0]
    return ref_mean.new_empty((2, 0 if own_mean is None else own_mean.shape[0], c)), ref_mean.new_empty((4, c))


def _backward_coefficients(r_g, r_gx, scale, groups, count):
    channels = scale.shape[-1]
    return (scale.new_empty(scale.shape), scale.new_empty(scale.shape), scale.new_empty((channels,)),
            scale.new_empty((channels,)))


def _double_coefficients(r_g, r_gx, r_u, r_ux, r_gu, weight, invstd, alpha, beta, groups, m, batch_stats):
    return tuple(invstd.new_empty(invstd.shape) for _ in range(7))


FAKES: dict[str, Callable] = {"stats_affine": _stats_affine, "group_stats_affine": _group_stats_affine,
                              "virtual_stats_affine": _virtual_stats_affine,
                              "virtual_stats_affine_backward": _virtual_stats_affine_backward,
                              "norm_act_backward_coefficients": _backward_coefficients,
                              "norm_act_double_coefficients": _double_coefficients}

registered: list[str] = register_fakes(FAKES)
