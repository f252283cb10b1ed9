"""Per-channel arguments that are strided views (slices of bigger buffers: weight, bias, running
statistics) give the reference's results on every backend, forward and backward.  The kernels read
dense vectors; the ops hand them dense copies (before, the Triton backend normalised eval-mode batch
norm with the wrong running statistics, and the CUDA backend refused such vectors with an internal
error)."""
import pytest
import torch

from fastgan import ops

from _tolerances import assert_close
from conftest import all_backend_params


def _strided_vectors(c, device):
    """weight, bias, running_mean, running_var: every one a strided (C,) view (the parameters of one
    buffer, the running statistics of another, as a user's would not share one)."""
    params, stats = torch.randn(2, 2 * c, device=device), torch.randn(2, 2 * c, device=device)
    params[0], stats[1] = params[0].abs() + 0.5, stats[1].abs() + 0.5
    vectors = params[0, ::2], params[1, ::2], stats[0, ::2], stats[1, ::2]
    assert not any(t.is_contiguous() for t in vectors)
    return vectors


LAYERS = {
    "batch_norm_act train": lambda x, w, b, rm, rv, impl: ops.batch_norm_act(x, rm, rv, w, b, impl=impl),
    "batch_norm_act eval": lambda x, w, b, rm, rv, impl: ops.batch_norm_act(x, rm, rv, w, b, training=False,
                                                                            impl=impl),
    "group_norm_act": lambda x, w, b, rm, rv, impl: ops.group_norm_act(x, 2, w, b, impl=impl),
    "layer_norm_act": lambda x, w, b, rm, rv, impl: ops.layer_norm_act(x, w, b, impl=impl),
    "instance_norm_act": lambda x, w, b, rm, rv, impl: ops.instance_norm_act(x, weight=w, bias=b, impl=impl),
    "pixel_shuffle_batch_norm_act train": lambda x, w, b, rm, rv, impl: ops.pixel_shuffle_batch_norm_act(
        x, 2, rm[:2], rv[:2], w[:2], b[:2], impl=impl),
    "pixel_shuffle_batch_norm_act eval": lambda x, w, b, rm, rv, impl: ops.pixel_shuffle_batch_norm_act(
        x, 2, rm[:2], rv[:2], w[:2], b[:2], training=False, impl=impl),
    "pixel_shuffle_act": lambda x, w, b, rm, rv, impl: ops.pixel_shuffle_act(x, 2, b[:2], impl=impl),
    "virtual_batch_norm": lambda x, w, b, rm, rv, impl: ops.virtual_batch_norm(x, rm, rm ** 2 + rv, 4, w, b,
                                                                               impl=impl),
}


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("layer", list(LAYERS))
def test_strided_per_channel_arguments(impl, device, layer):
    x = torch.randn(3, 8, 4, 4, device=device)
    results = []
    for run_impl in (impl, "ref"):
        torch.manual_seed(0)  # the same vectors for both runs
        w, b, rm, rv = _strided_vectors(8, device)
        leaves = [x.clone().requires_grad_(), w.requires_grad_(), b.requires_grad_()]
        y = LAYERS[layer](leaves[0], leaves[1], leaves[2], rm, rv, run_impl)
        grads = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel(), device=device).view(y.shape)).sum(),
                                    leaves, allow_unused=True)
        results.append([y, *grads, rm.clone(), rv.clone()])
    for name, got, want in zip(("y", "dx", "dw", "db", "running_mean", "running_var"), *results):
        if want is None:
            assert got is None, name
            continue
        assert_close(got, want, torch.float32, scale=4.0, name=name)
