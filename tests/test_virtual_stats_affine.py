"""virtual_stats_affine (virtual batch norm's moments -> per-example affine tables, one launch each way):
the kernels against the reference, and the layer's first-order path on them."""
import importlib

import pytest
import torch

from fastgan import _backend
from fastgan.ops import virtual_batch_norm, virtual_batch_reference_stats
from fastgan.reference.virtual_batch_norm import virtual_stats_affine as ref_tables
from fastgan.reference.virtual_batch_norm import virtual_stats_affine_backward as ref_tables_backward
from fastgan.reference.virtual_batch_norm import virtual_stats_affine_vjp as ref_vjp

from _tolerances import assert_close
from conftest import all_backend_params

# the module (fastgan.ops.virtual_batch_norm names the function there)
vbn_ops = importlib.import_module("fastgan.ops.virtual_batch_norm")


def _kernels(impl):
    return _backend.kernels(impl, "virtual_stats_affine")


def _inputs(n, c, dtype, device, own, weight, bias):
    ref_mean = torch.randn(c, dtype=dtype, device=device)
    ref_sq = ref_mean ** 2 + torch.rand(c, dtype=dtype, device=device) + 0.1
    own_mean = own_sq = None
    if own:
        own_mean = torch.randn(n, c, dtype=dtype, device=device) * 2
        own_sq = own_mean ** 2 + torch.rand(n, c, dtype=dtype, device=device) * 3
        # rows whose mixed E[x^2] - E[x]^2 comes out negative (the clamp, and its zero gradient)
        own_sq[0] = own_mean[0] ** 2 - 1000.0
    w = torch.rand(c, dtype=dtype, device=device) + 0.5 if weight else None
    b = torch.randn(c, dtype=dtype, device=device) if bias else None
    return own_mean, own_sq, ref_mean, ref_sq, w, b


@pytest.mark.parametrize("impl,device", all_backend_params())
# a partial block; several channel blocks; one value; rows over several row lanes / tiles, not a multiple
@pytest.mark.parametrize("n,c", [(5, 7), (3, 300), (1, 1), (37, 5), (130, 70)])
@pytest.mark.parametrize("own", [True, False])  # live examples / the reference batch itself
@pytest.mark.parametrize("weight,bias", [(True, True), (False, False), (True, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_matches_ref(impl, device, n, c, own, weight, bias, dtype):
    own_mean, own_sq, ref_mean, ref_sq, w, b = _inputs(n, c, dtype, device, own, weight, bias)
    mix, eps = 1.0 / 5, 1e-5
    got = _kernels(impl).virtual_stats_affine(own_mean, own_sq, ref_mean, ref_sq, w, b, mix, eps)
    want = ref_tables(own_mean, own_sq, ref_mean, ref_sq, w, b, mix, eps)
    for name, g, e in zip(("scale", "shift", "identity"), got, want):
        assert g.shape == e.shape and g.dtype == e.dtype, name
        assert_close(g, e, dtype, name=name)
    if own:  # the clamped row normalises with 1 / sqrt(eps), as the reference does
        assert (got[0][0].abs() > 100).all()
    g_scale, g_shift = torch.randn_like(got[0]), torch.randn_like(got[1])
    got = _kernels(impl).virtual_stats_affine_backward(g_scale, g_shift, own_mean, own_sq, ref_mean, ref_sq, w, mix,
                                                       eps)
    want = ref_tables_backward(g_scale, g_shift, own_mean, own_sq, ref_mean, ref_sq, w, mix, eps)
    for name, g, e in zip(("g_own", "g_channel"), got, want):
        assert g.shape == e.shape and g.dtype == e.dtype, name
        assert_close(g, e, dtype, scale=4.0, name=name)
    if own:
        # the clamp's gradient: none into the clamped row's E[x^2] (its mean still moves the shift)
        assert torch.equal(got[0][1, 0], torch.zeros_like(got[0][1, 0])) and (got[0][0, 0] != 0).all()
        assert n == 1 or (got[0][1, 1:] != 0).any()


@pytest.mark.parametrize("own", [True, False])
@pytest.mark.parametrize("weight", [True, False])
def test_ref_backward_is_autograd_of_the_tables(own, weight):
    """The reference's written-out vector-Jacobian product (what the kernels and the differentiable
    backward follow) is autograd of the tables, the clamped row included; and differentiable again."""
    inputs = [None if t is None else t.requires_grad_()
              for t in _inputs(4, 3, torch.float64, "cpu", own, weight, True)]
    scale, shift, _ = ref_tables(*inputs, 0.25, 1e-5)
    g_scale, g_shift = torch.randn_like(scale, requires_grad=True), torch.randn_like(shift, requires_grad=True)
    given = [t for t in inputs if t is not None]
    want = torch.autograd.grad((scale, shift), given, (g_scale, g_shift), create_graph=True)
    got = [g for g, t in zip(ref_vjp(g_scale, g_shift, *inputs[:5], 0.25, 1e-5), inputs) if t is not None]
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e)
    probe = [torch.randn_like(e) for e in want]
    second = lambda grads: torch.autograd.grad(sum((p * g).sum() for p, g in zip(probe, grads)),  # noqa: E731
                                               given + [g_scale, g_shift], retain_graph=True, allow_unused=True)
    for g, e in zip(second(got), second(want)):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_first_order_runs_the_backward_kernel(impl, device, dtype, monkeypatch):
    """Forward and a plain backward (no create_graph: the tables' backward kernel, never the reference
    arithmetic) against ref, through the reference pass and the live pass."""
    x = (torch.randn(3, 5, 4, 4, device=device) * 1.5 + 0.3).to(dtype)
    x_ref = torch.randn(4, 5, 4, 4, device=device).to(dtype)
    w, b = torch.rand(5, device=device) + 0.5, torch.randn(5, device=device) * 0.2

    def run(impl):
        leaves = [t.detach().clone().requires_grad_() for t in (x, x_ref, w, b)]
        mu, sq = virtual_batch_reference_stats(leaves[1], impl=impl)
        y_ref = virtual_batch_norm(leaves[1], mu, sq, 4, leaves[2], leaves[3], 1e-5, "leaky_relu", impl=impl,
                                   reference_batch=True)
        y = virtual_batch_norm(leaves[0], mu, sq, 4, leaves[2], leaves[3], 1e-5, "leaky_relu", impl=impl)
        loss = (y.float() * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum() + (y_ref.float() ** 2).sum()
        return [y.detach(), y_ref.detach(), *torch.autograd.grad(loss, leaves)]

    expected = run("ref")

    def refuse(*args, **kwargs):
        raise AssertionError("the first-order backward ran the reference arithmetic")

    monkeypatch.setattr(vbn_ops, "reference_virtual_stats_affine_vjp", refuse)
    for name, g, e in zip(("y", "y_ref", "dx", "dx_ref", "dw", "db"), run(impl), expected):
        assert_close(g, e, dtype, scale=1.0 if name.startswith("y") else 4.0, name=name)


@pytest.mark.parametrize("impl,device", all_backend_params())
def test_op_errors(impl, device):
    k = _kernels(impl)
    own_mean, own_sq, ref_mean, ref_sq, w, b = _inputs(3, 4, torch.float32, device, True, True, True)
    with pytest.raises(ValueError, match="own_mean and own_sq"):
        k.virtual_stats_affine(own_mean, None, ref_mean, ref_sq, w, b, 0.2, 1e-5)
    with pytest.raises(ValueError, match="ref_sq must have ref_mean's shape"):
        k.virtual_stats_affine(own_mean, own_sq, ref_mean, ref_sq[:3], w, b, 0.2, 1e-5)
    with pytest.raises(TypeError, match="weight must have ref_mean's dtype"):
        k.virtual_stats_affine(own_mean, own_sq, ref_mean, ref_sq, w.double(), b, 0.2, 1e-5)
    with pytest.raises(ValueError, match="contiguous"):
        k.virtual_stats_affine(own_mean, own_sq, ref_mean, ref_sq, torch.rand(8, device=device)[::2], b, 0.2, 1e-5)
    g = torch.zeros(3, 5, device=device)
    with pytest.raises(ValueError, match="g_scale"):
        k.virtual_stats_affine_backward(g, g, own_mean, own_sq, ref_mean, ref_sq, w, 0.2, 1e-5)


@pytest.mark.parametrize("impl,device", all_backend_params())
def test_stacked_layers_double_backward(impl, device):
    """Two layers sharing weight, bias and reference statistics, differentiated twice: the second layer's
    tables reach the shared parameters both directly and through the first layer, and their
    differentiable backward must count only the direct path (the engine takes the other)."""
    x = torch.randn(3, 4, 3, 3, device=device, dtype=torch.float64)
    x_ref = torch.randn(5, 4, 3, 3, device=device, dtype=torch.float64)
    w, b = torch.rand(4, device=device, dtype=torch.float64) + 0.5, torch.randn(4, device=device, dtype=torch.float64)

    def run(impl):
        leaves = [t.detach().clone().requires_grad_() for t in (x, x_ref, w, b)]
        mu, sq = virtual_batch_reference_stats(leaves[1], impl=impl)
        layer = lambda h: virtual_batch_norm(h, mu, sq, 5, leaves[2], leaves[3], 1e-5, "leaky_relu",  # noqa: E731
                                             impl=impl)
        y = layer(layer(leaves[0]))
        first = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).reshape(y.shape).to(y)).sum(), leaves,
                                    create_graph=True)
        return [*first, *torch.autograd.grad(sum((g ** 2).sum() for g in first), leaves)]

    for name, g, e in zip(("dx", "dx_ref", "dw", "db", "ddx", "ddx_ref", "ddw", "ddb"), run(impl), run("ref")):
        assert_close(g, e, torch.float64, name=name)


@pytest.mark.parametrize("impl,device", all_backend_params())
def test_layer_takes_strided_statistics_and_parameters(impl, device):
    """Reference statistics, weight and bias that are strided views (slices of bigger buffers) give the
    reference's result: the op hands the table kernels contiguous copies."""
    x = torch.randn(3, 4, 3, 3, device=device)
    buffers = torch.randn(4, 8, device=device)
    buffers[1] = buffers[0] ** 2 + buffers[1].abs() + 0.1  # E[x^2] above E[x]^2
    ref_mean, ref_sq, w, b = buffers[:, ::2]
    assert not any(t.is_contiguous() for t in (ref_mean, ref_sq, w, b))
    for reference_batch in (False, True):
        y = virtual_batch_norm(x, ref_mean, ref_sq, 5, w, b, impl=impl, reference_batch=reference_batch)
        want = virtual_batch_norm(x, ref_mean, ref_sq, 5, w, b, impl="ref", reference_batch=reference_batch)
        assert_close(y, want, torch.float32, name=f"y (reference_batch={reference_batch})")
