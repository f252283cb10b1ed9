"""fastgan's fused ops: one module per op with its autograd Functions and dispatch.

Each op takes ``impl="auto" | "ref" | "triton" | "cuda"``; see ``fastgan._backend``.
"""
from .batch_norm_act import batch_norm_act
from .group_norm_act import group_norm_act, instance_norm_act, layer_norm_act
from .minibatch_discrimination import minibatch_discrimination
from .pixel_shuffle_act import pixel_shuffle_act, pixel_shuffle_batch_norm_act
from .penalty import interpolate, penalty_from_grad
from .virtual_batch_norm import virtual_batch_norm, virtual_batch_reference_stats
from .sync_batch_norm_act import sync_batch_norm_act

__all__ = ["batch_norm_act", "group_norm_act", "instance_norm_act", "layer_norm_act",
           "minibatch_discrimination", "interpolate", "penalty_from_grad", "pixel_shuffle_act", "pixel_shuffle_batch_norm_act",
           "virtual_batch_norm", "virtual_batch_reference_stats", "sync_batch_norm_act"]
