"""Virtual batch norm: the authors' formula, reference-pass semantics, fast path vs ref."""
import pytest
import torch
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

from fastgan import reference
from fastgan.nn import VirtualBatchNorm1d, VirtualBatchNorm2d, virtual_batch_reference
from fastgan.ops import virtual_batch_norm, virtual_batch_reference_stats

from _tolerances import assert_close
from conftest import all_backend_params


def formula(x, x_ref, gamma, beta, eps=1e-5):
    """The authors' code, written out per example with loops (float64)."""
    x, x_ref = x.double(), x_ref.double()
    n_ref = x_ref.shape[0]
    mu_r = x_ref.mean(dim=(0, 2, 3))
    s_r = (x_ref ** 2).mean(dim=(0, 2, 3))
    a = 1.0 / (n_ref + 1)
    out = []
    for i in range(x.shape[0]):
        mu_i = a * x[i].mean(dim=(1, 2)) + (1 - a) * mu_r
        s_i = a * (x[i] ** 2).mean(dim=(1, 2)) + (1 - a) * s_r
        y = (x[i] - mu_i[:, None, None]) / torch.sqrt(eps + s_i - mu_i ** 2)[:, None, None]
        out.append(y * gamma.double()[:, None, None] + beta.double()[:, None, None])
    ref_out = (x_ref - mu_r[None, :, None, None]) / torch.sqrt(eps + s_r - mu_r ** 2)[None, :, None, None]
    return torch.stack(out), ref_out * gamma.double()[None, :, None, None] + beta.double()[None, :, None, None]


def test_ref_matches_the_formula_and_is_not_the_live_batch_variant():
    x, x_ref = torch.randn(3, 2, 4, 5) * 2 + 1, torch.randn(6, 2, 4, 5)
    gamma, beta = torch.rand(2) + 0.5, torch.randn(2)
    mu_r, s_r = reference.virtual_batch_reference_stats(x_ref)
    y = reference.virtual_batch_norm(x, mu_r, s_r, 6, gamma, beta)
    y_ref = reference.virtual_batch_norm(x_ref, mu_r, s_r, 6, gamma, beta, reference_batch=True)
    e, e_ref = formula(x, x_ref, gamma, beta)
    assert_close(y, e.float())
    assert_close(y_ref, e_ref.float())
    # Normalising an example alone must depend on that example only (not on the live batch).
    y0 = reference.virtual_batch_norm(x[:1], mu_r, s_r, 6, gamma, beta)
    assert_close(y0, y[:1])


def test_all_five_gradients_match_the_formula():
    x = torch.randn(3, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    x_ref = torch.randn(4, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    gamma = (torch.rand(2, dtype=torch.float64) + 0.5).requires_grad_()
    beta = torch.randn(2, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 2, 3, 4, dtype=torch.float64)
    e, _ = formula(x, x_ref, gamma, beta)
    expected = torch.autograd.grad((e * g).sum(), [x, x_ref, gamma, beta])
    mu_r, s_r = reference.virtual_batch_reference_stats(x_ref)
    y = reference.virtual_batch_norm(x, mu_r, s_r, 4, gamma, beta)
    got = torch.autograd.grad((y * g).sum(), [x, x_ref, gamma, beta])
    for a, b in zip(got, expected):
        assert_close(a, b)


def test_ref_gradcheck_gradgradcheck():
    x = torch.randn(2, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    mu = torch.randn(2, dtype=torch.float64, requires_grad=True)
    sq = (mu.detach() ** 2 + 1.5).requires_grad_()
    w = torch.rand(2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    fn = lambda *a: reference.virtual_batch_norm(*a[:3], 3, *a[3:], 1e-5, "leaky_relu")  # noqa: E731
    assert gradcheck(fn, (x, mu, sq, w, b)) and gradgradcheck(fn, (x, mu, sq, w, b))


def pipeline(impl, x, x_ref, w, b, activation):
    """Reference pass + live pass, first and second derivatives wrt everything."""
    x, x_ref, w, b = (t.detach().clone().requires_grad_() for t in (x, x_ref, w, b))
    mu, sq = virtual_batch_reference_stats(x_ref, impl=impl)
    y_ref = virtual_batch_norm(x_ref, mu, sq, x_ref.shape[0], w, b, 1e-5, activation, impl=impl, reference_batch=True)
    y = virtual_batch_norm(x, mu, sq, x_ref.shape[0], w, b, 1e-5, activation, impl=impl)
    lin = torch.linspace(-1, 1, y.numel()).reshape(y.shape).to(y)
    loss = (y.float() * lin.float()).sum() + (y_ref.float() ** 2).sum() * 0.1
    first = torch.autograd.grad(loss, [x, x_ref, w, b], create_graph=True)
    second = torch.autograd.grad(sum((g.float() ** 2).sum() for g in first), [x, x_ref, w, b])
    return [y.detach(), y_ref.detach()] + [g.detach() for g in first] + list(second)


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,channels_last,activation", [((3, 4, 5, 3), False, "identity"),
                                                           ((2, 3, 4, 4), True, "leaky_relu"),
                                                           ((5, 3), False, "relu")])
def test_fast_matches_ref(impl, device, dtype, shape, channels_last, activation):
    x = torch.randn(shape, device=device).to(dtype) * 1.5 + 0.3
    x_ref = torch.randn((4,) + shape[1:], device=device).to(dtype)
    if channels_last:
        x, x_ref = x.to(memory_format=torch.channels_last), x_ref.to(memory_format=torch.channels_last)
    w, b = torch.rand(shape[1], device=device) + 0.5, torch.randn(shape[1], device=device) * 0.2
    fast, ref = pipeline(impl, x, x_ref, w, b, activation), pipeline("ref", x, x_ref, w, b, activation)
    scale = 1.0 if dtype == torch.float32 else 2.0
    names = ["y", "y_ref", "dx", "dx_ref", "dw", "db", "ddx", "ddx_ref", "ddw", "ddb"]
    if dtype == torch.float32:
        for name, a, e in zip(names, fast, ref):
            assert_close(a, e, dtype, scale=scale * (1 if name in ("y", "y_ref") else 4), name=name)
        return
    # Half precision: the first derivatives enter the second pass rounded to 16 bits, and the
    # second derivatives (sums over the whole batch with cancellation, ddx_ref most) of the
    # reference itself are then up to ~0.35 off the float64 truth, more than the elementwise
    # tolerance: two 16-bit computations can't be compared elementwise there.  Those are held to
    # the truth instead: no farther from it than twice the reference's own error plus the
    # contract's 2e-2 of its scale.
    truth = pipeline("ref", *(t.double() for t in (x, x_ref, w, b)), activation)
    for name, a, e, t in zip(names, fast, ref, truth):
        if not name.startswith("dd"):
            assert_close(a, e, dtype, scale=scale * (1 if name in ("y", "y_ref") else 4), name=name)
            continue
        assert torch.isfinite(a).all(), f"{name}: non-finite values in the result"
        err, ref_err = (a.double() - t).abs().max().item(), (e.double() - t).abs().max().item()
        assert err <= 2 * ref_err + 2e-2 * t.abs().max().item(), (
            f"{name}: {err:.4g} from the float64 truth, the reference {ref_err:.4g}")


@pytest.mark.parametrize("impl,device", all_backend_params())
def test_fast_gradcheck_gradgradcheck_float64(impl, device):
    x = torch.randn(2, 2, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    mu = torch.randn(2, dtype=torch.float64, device=device, requires_grad=True)
    sq = (mu.detach() ** 2 + 1.5).requires_grad_()
    w = torch.rand(2, dtype=torch.float64, device=device, requires_grad=True)
    fn = lambda x, mu, sq, w: virtual_batch_norm(x, mu, sq, 3, w, None, 1e-5, "leaky_relu", impl=impl)  # noqa: E731
    assert gradcheck(fn, (x, mu, sq, w), fast_mode=True) and gradgradcheck(fn, (x, mu, sq, w), fast_mode=True)
    stats = lambda x: virtual_batch_reference_stats(x, impl=impl)  # noqa: E731
    assert gradcheck(stats, (x,), fast_mode=True) and gradgradcheck(stats, (x,), fast_mode=True)


def test_op_errors():
    x, mu, sq = torch.randn(2, 3, 4, 4), torch.zeros(3), torch.ones(3)
    with pytest.raises(ValueError, match="ref_count"):
        virtual_batch_norm(x, mu, sq, 0)
    with pytest.raises(ValueError, match="ref_mean must have 3"):
        virtual_batch_norm(x, torch.zeros(2), sq, 4)
    with pytest.raises(ValueError, match="ref_mean and ref_sq_mean are required"):
        virtual_batch_norm(x, None, sq, 4)


# ----------------------------------------------------------------------------- modules


def tiny_generator(impl="auto", detach=False):
    return nn.Sequential(nn.ConvTranspose2d(4, 6, 4, 1, 0), VirtualBatchNorm2d(6, activation="relu", impl=impl,
                                                                                detach_reference=detach),
                         nn.ConvTranspose2d(6, 3, 4, 2, 1), VirtualBatchNorm2d(3, impl=impl), nn.Tanh())


def test_module_before_reference_pass_raises():
    g = tiny_generator()
    with pytest.raises(RuntimeError, match="before any reference pass"):
        g(torch.randn(2, 4, 1, 1))
    with pytest.raises(ValueError, match="no VirtualBatchNorm layers"):
        with virtual_batch_reference(nn.Linear(2, 2)):
            pass
    layer = VirtualBatchNorm2d(3)
    with pytest.raises(ValueError, match="x has 4 channels"):
        layer(torch.randn(2, 4, 3, 3))


def test_module_reference_pass_semantics_and_gradient_flow():
    g = tiny_generator()
    z_ref, z = torch.randn(5, 4, 1, 1), torch.randn(3, 4, 1, 1)
    with virtual_batch_reference(g):
        out_ref = g(z_ref)
    vbn = g[1]
    mean, sq, count = vbn.reference
    assert count == 5 and mean.requires_grad
    out = g(z)
    # Live outputs follow the formula with the recorded reference statistics.
    h = g[0](z)
    e = reference.virtual_batch_norm(h, mean, sq, 5, vbn.weight, vbn.bias, activation="relu")
    assert_close(g[1](h), e)
    # Gradients of the live loss reach the first layer through the reference batch too.
    first_w = g[0].weight
    grad_live_only = torch.autograd.grad(out.sum(), first_w, retain_graph=True)[0]
    g_detached = tiny_generator(detach=True)
    g_detached.load_state_dict(g.state_dict())
    with virtual_batch_reference(g_detached):
        g_detached(z_ref)
    grad_detached = torch.autograd.grad(g_detached(z).sum(), g_detached[0].weight)[0]
    assert not torch.allclose(grad_live_only, grad_detached)  # the reference path contributes
    assert out_ref.shape == (5, 3, 8, 8)
    # Statistics stay until the next reference pass.
    with virtual_batch_reference(g):
        g(torch.randn(7, 4, 1, 1))
    assert g[1].reference[2] == 7


def test_reference_pass_must_reach_every_layer():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = VirtualBatchNorm2d(2), VirtualBatchNorm2d(2)

        def forward(self, x):
            return self.a(x)

    with pytest.raises(RuntimeError, match="did not reach"):
        with virtual_batch_reference(Skip()) as m:
            m(torch.randn(3, 2, 2, 2))


def test_vbn1d():
    layer = VirtualBatchNorm1d(3)
    with virtual_batch_reference(layer):
        layer(torch.randn(6, 3))
    assert layer(torch.randn(2, 3)).shape == (2, 3)


def test_module_copies_keep_the_reference_statistics():
    import copy
    import pickle

    g = tiny_generator()
    with virtual_batch_reference(g):
        g(torch.randn(5, 4, 1, 1))
    z = torch.randn(3, 4, 1, 1)
    for c in (copy.deepcopy(g), pickle.loads(pickle.dumps(g))):  # (the recorded statistics are inside a graph)
        assert_close(c(z), g(z))
        assert not c[1].reference[0].requires_grad  # values only: the graph reached the original's weights
        c(z).sum().backward()
        assert c[0].weight.grad is not None
    assert g[1].reference[0].requires_grad  # the original keeps its graph


@pytest.mark.parametrize("impl,device", all_backend_params())
def test_reference_pass_under_inference_mode(impl, device):
    # statistics recorded under torch.inference_mode are inference tensors; the live pass saves them
    g = tiny_generator(impl).to(device)
    torch.manual_seed(0)
    z_ref, z = torch.randn(5, 4, 1, 1, device=device), torch.randn(3, 4, 1, 1, device=device)
    with torch.inference_mode(), virtual_batch_reference(g):
        g(z_ref)
    expected = tiny_generator("ref").to(device)
    expected.load_state_dict(g.state_dict())
    with torch.inference_mode(), virtual_batch_reference(expected):
        expected(z_ref)
    out, out_ref = g(z), expected(z)
    assert_close(out, out_ref)
    out.square().sum().backward()
    out_ref.square().sum().backward()
    assert_close(g[0].weight.grad, expected[0].weight.grad)
