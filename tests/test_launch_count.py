"""Launches per fused layer and per training iteration, counted on meta tensors (no GPU needed).

At small batch a GAN iteration is launch-bound, so these counts are a budget:
a change that adds launches to a fused layer's forward or backward fails here
before it costs time on a GPU.  ``benchmarks/launch_count.py`` has the method
(dispatcher ops that launch work, fastgan's layers on their CUDA backend).
"""
import sys
from pathlib import Path

import pytest
import torch

from fastgan import _ext
from fastgan.nn import BatchNormAct2d

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import launch_count  # noqa: E402

pytestmark = pytest.mark.skipif(not _ext.load()[0], reason="needs fastgan._C (its ops' meta kernels)")


def _count(fn):
    counter = launch_count.LaunchCounter()
    with counter:
        out = fn()
    return counter, out


def _layer_launches(layer_cls):
    """(forward, backward) counters of one fused layer on meta tensors (the gradient made outside them)."""
    with launch_count._meta_cuda_backend(), torch.device("meta"):
        layer = layer_cls(64, impl="cuda")
        x = torch.randn(8, 64, 16, 16, requires_grad=True)
        forward, y = _count(lambda: layer(x))
        grad = torch.randn(y.shape)
        backward, _ = _count(lambda: y.backward(grad))
    return forward, backward


def test_fused_batch_norm_layer_launch_budget():
    forward, backward = _layer_launches(BatchNormAct2d)
    # channel_stats_affine (statistics; invstd, affine tables, running stats in its merge kernel),
    # norm_act_forward, and the num_batches_tracked increment nn.BatchNorm2d does too
    assert forward.ops["fastgan.channel_stats_affine"] == 1
    assert forward.total <= 3, forward.ops
    # backward_reduce_coefficients (the sums, then k2, k3 from them), apply -- as eager (norm, activation)
    assert backward.ops["fastgan.norm_act_backward_reduce_coefficients"] == 1
    assert backward.total <= 2, backward.ops


def test_training_iterations_are_counted_on_the_fused_path():
    fused = launch_count.count_iteration("dcgan", "cuda", batch=8, size=32)
    eager = launch_count.count_iteration("dcgan", "eager", batch=8, size=32)
    assert fused.ops["fastgan.norm_act_forward"] > 0 and "fastgan.norm_act_forward" not in eager.ops
    assert eager.ops["aten.convolution"] == fused.ops["aten.convolution"] > 0
    assert fused.by_category()["optimizer"] == eager.by_category()["optimizer"] > 0
    # measured 170 vs 170 at 64x64 (209 before channel_stats_affine / backward_reduce_coefficients, 326
    # before stats_affine): no more launches than eager
    assert fused.total <= eager.total, (fused.total, eager.total)


def test_one_pass_dcgan_iteration_launches_fewer():
    """The D step as one pass over real and fake with per-half statistics (fastgan.nn.separate_batches):
    half the D step's convolutions; each batch-norm forward one launch more than plain batch norm's
    (segment_stats, then stats_affine, which also updates the running stats once per half)."""
    one_pass = launch_count.count_iteration("dcgan-onepass", "cuda", batch=8, size=32)
    two_passes = launch_count.count_iteration("dcgan", "cuda", batch=8, size=32)
    # (one of each per batch-norm layer of D; the generator's keep channel_stats_affine)
    assert one_pass.ops["fastgan.segment_stats"] == one_pass.ops["fastgan.stats_affine"] > 0
    assert one_pass.ops["aten.convolution"] < two_passes.ops["aten.convolution"]
    # measured 137 vs 170 at 64x64 (the eager iteration: 170)
    assert one_pass.total <= two_passes.total - 20, (one_pass.total, two_passes.total)


def test_fused_layer_norm_layer_launch_budget():
    from fastgan.nn import LayerNormAct2d

    forward, backward = _layer_launches(LayerNormAct2d)
    # row_stats_affine (per-(n, c) moments, then the group merge, invstd, affine tables), norm_act_forward:
    # as eager's two (group norm, activation)
    assert forward.ops["fastgan.row_stats_affine"] == 1
    assert forward.total <= 2, forward.ops
    # backward_reduce_coefficients (the sums, then their group sums and dw / db summed over the samples),
    # apply: nine launches before backward_coefficients
    assert backward.ops["fastgan.norm_act_backward_reduce_coefficients"] == 1
    assert backward.total <= 2, backward.ops


def test_wgan_gp_iteration_launches_fewer_than_eager():
    # fused double backward: one coefficient launch per layer instead of ~50 eager autograd ops
    fused = launch_count.count_iteration("wgan-gp", "cuda", batch=8, size=32)
    eager = launch_count.count_iteration("wgan-gp", "eager", batch=8, size=32)
    assert fused.ops["fastgan.norm_act_double_coefficients"] > 0
    # measured 1050 vs 2265 at 64x64 (1601 before backward_reduce_coefficients, row_stats_affine and
    # unmaterialised None grads)
    assert fused.total < 0.5 * eager.total, (fused.total, eager.total)


def test_fused_layers_launch_no_more_than_eager_ones():
    """benchmarks/layer_launches.py: each fused layer against the eager layers it replaces.  The norms
    launch as many operators as eager's or fewer; the pixel-shuffle layers more (their per-output-channel
    tables repeated to the input channels, two launches, and the parameters' gradients summed back),
    held at these counts (they were 6 + 4 and 18 + 4, then 4 + 4 and 8 + 4 with the tables repeated
    in Python, whose autograd nodes cost more host time than the launch saved); virtual batch norm
    far fewer than its plain-PyTorch twin, its tables one launch each way."""
    import layer_launches

    rows = {r["layer"]: r for r in layer_launches.table()}
    for name in ("batch_norm_act", "group_norm_act (32 groups)", "layer_norm_act", "instance_norm_act"):
        assert sum(rows[name]["fastgan"]) <= sum(rows[name]["eager"]), rows[name]
    assert rows["pixel_shuffle_act (r=2, bias)"]["fastgan"] == (5, 4), rows["pixel_shuffle_act (r=2, bias)"]
    assert rows["pixel_shuffle_batch_norm_act (r=2)"]["fastgan"] == (4, 4), rows["pixel_shuffle_batch_norm_act (r=2)"]
    assert "fastgan.channel_stats_affine" in rows["pixel_shuffle_batch_norm_act (r=2)"]["fastgan_forward_ops"]
    # virtual batch norm: 23 + 33 with its per-sample tables as Python arithmetic, 14 + 33 with fewer of
    # it, 5 + 12 with virtual_stats_affine and its backward kernel
    vbn = rows["virtual_batch_norm (live pass)"]
    assert vbn["fastgan"][0] <= 5 and vbn["fastgan"][1] <= 12, vbn
    assert "fastgan.virtual_stats_affine" in vbn["fastgan_forward_ops"], vbn
