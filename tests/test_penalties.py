"""Gradient penalties: the fused pieces (interpolation, norm + penalty reduction)
against ``ref``, the formulas of every kind against hand-computed values, and
critics made of fastgan layers against the same critics made of plain ``nn``
layers, with the fast path checked to be taken inside the double backward."""
import collections
import contextlib
import math

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.utils._python_dispatch import TorchDispatchMode

import fastgan
from fastgan import _backend
from fastgan.nn import BatchNormAct2d, GroupNormAct, InstanceNormAct2d, LayerNormAct2d
from fastgan.ops import interpolate, penalty_from_grad
from fastgan.ops._autograd import THIRD_ORDER_MESSAGE
from fastgan.penalties import KINDS, LazyRegularizer, gradient_penalty, penalty_from_outputs, perturb

from _tolerances import assert_close
from conftest import all_backend_params

MODES = ("two-sided", "one-sided", "squared")
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def impls_with_ref():
    """``ref`` on CPU plus every fast backend (CUDA ones skip without a GPU)."""
    return [pytest.param("ref", "cpu", id="ref")] + all_backend_params()


def grads_or_zeros(value, params):
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


# ----------------------------------------------------------------------------- fused pieces vs ref

GRAD_SHAPES = [((4, 3, 6, 6), False), ((4, 3, 5, 3), True), ((5, 7), False), ((3,), False), ((2, 3, 41, 41), False)]


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_penalty_from_grad_matches_ref(impl, device, dtype, mode):
    for shape, channels_last in GRAD_SHAPES:
        if shape[-1] == 41 and dtype != torch.float32:
            continue  # the multi-partial merge (K > one tile): once is enough under the interpreter
        g = (torch.randn(shape) * 0.7).to(device=device, dtype=dtype)
        if channels_last:
            g = g.to(memory_format=torch.channels_last)
        g[1] = 0  # a zero gradient: finite value, zero derivative
        center = 0.8
        results = []
        for i in (impl, "ref"):
            gi = g.clone().requires_grad_()
            value, norms = penalty_from_grad(gi, mode, center, return_norms=True, impl=i)
            (dg,) = torch.autograd.grad(value * 3.0, gi)
            results.append((value, norms, dg))
        (v, n, dg), (ev, en, edg) = results
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        assert v.dtype == acc and v.shape == () and n.dtype == acc and n.shape == (shape[0],)
        assert dg.dtype == dtype and dg.stride() == g.stride()
        assert_close(v, ev, acc, name=f"value {shape}")
        assert_close(n, en, acc, name=f"norms {shape}")
        assert_close(dg, edg, dtype, name=f"dgrad {shape}")
        assert torch.all(dg[1] == 0)


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("dtype", DTYPES)
def test_interpolate_matches_ref(impl, device, dtype):
    for shape, channels_last in [((4, 3, 5, 5), False), ((3, 2, 4, 3), True), ((6, 2), False)]:
        real = torch.randn(shape).to(device=device, dtype=dtype)
        fake = torch.randn(shape).to(device=device, dtype=dtype)
        if channels_last:
            real = real.to(memory_format=torch.channels_last)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        eps = torch.rand(shape[0], device=device, dtype=acc)
        eps[0] = 1.0
        w = torch.randn(shape).to(device=device, dtype=dtype)
        results = []
        for i in (impl, "ref"):
            r, f, e = (t.clone().requires_grad_() for t in (real, fake, eps))
            out = interpolate(r, f, e, impl=i)
            grads = torch.autograd.grad((out.to(acc) * w.to(acc)).sum(), (r, f, e))
            results.append((out, *grads))
        fast, ref = results
        assert fast[0].dtype == dtype and fast[0].stride() == real.stride()
        assert torch.equal(fast[0][0], real[0])  # epsilon = 1 gives real exactly
        for name, a, b in zip(("out", "d_real", "d_fake", "d_epsilon"), fast, ref):
            assert_close(a, b, acc if name == "d_epsilon" else dtype, name=f"{name} {shape}")


@pytest.mark.parametrize("impl,device", all_backend_params())
def test_interpolate_backward_only_what_is_needed(impl, device):
    real = torch.randn(3, 4, device=device, requires_grad=True)
    fake = torch.randn(3, 4, device=device)
    out = interpolate(real, fake, 0.25, impl=impl)
    (d_real,) = torch.autograd.grad(out.sum(), real)
    assert_close(d_real, torch.full_like(d_real, 0.25))


@pytest.mark.parametrize("check", [gradcheck, gradgradcheck], ids=["gradcheck", "gradgradcheck"])
@pytest.mark.parametrize("impl,device", impls_with_ref())
def test_gradcheck_gradgradcheck_float64(impl, device, check):
    g = torch.randn(3, 2, 3, device=device, dtype=torch.float64, requires_grad=True)
    for mode in MODES:
        assert check(lambda t: penalty_from_grad(t, mode, 0.9, impl=impl), (g,), fast_mode=True)
    args = [torch.randn(3, 5, device=device, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    args.append(torch.rand(3, device=device, dtype=torch.float64, requires_grad=True))
    assert check(lambda r, f, e: interpolate(r, f, e, impl=impl), args, fast_mode=True)


@pytest.mark.parametrize("impl,device", all_backend_params())
def test_second_order_matches_ref_and_third_raises(impl, device):
    """The contract's two orders for each op itself: a Hessian-vector product of the penalty w.r.t. g (and of
    interpolate's backward) equals the reference's; a third derivative raises instead of returning zeros."""
    g0 = torch.randn(3, 2, 4, device=device)  # (no zero sample: the norm has no second derivative at 0)
    v = torch.randn(3, 2, 4, device=device)
    for mode in MODES:
        hv, leaf = {}, {}
        for which in (impl, "ref"):
            g = leaf[which] = g0.clone().requires_grad_()
            (dg,) = torch.autograd.grad(penalty_from_grad(g, mode, 0.7, impl=which), g, create_graph=True)
            (hv[which],) = torch.autograd.grad((dg * v).sum(), g, create_graph=which == impl)
        assert_close(hv[impl], hv["ref"], name=f"{mode} Hessian-vector product")
        with pytest.raises(RuntimeError, match="second derivatives only"):
            torch.autograd.grad(hv[impl].sum(), leaf[impl])
    real, fake, eps = (torch.randn(3, 4, device=device), torch.randn(3, 4, device=device),
                       torch.rand(3, device=device))
    second, leaves = {}, {}
    for which in (impl, "ref"):
        r, f, e = leaves[which] = tuple(t.clone().requires_grad_() for t in (real, fake, eps))
        y = interpolate(r, f, e, impl=which)
        (dr,) = torch.autograd.grad((y * y).sum(), r, create_graph=True)
        second[which] = torch.autograd.grad(dr.sum(), (r, f, e), create_graph=which == impl)
    for name, a, b in zip(("real", "fake", "epsilon"), second[impl], second["ref"]):
        assert_close(a, b, name=f"interpolate second derivative, {name}")
    with pytest.raises(RuntimeError, match="second derivatives only"):
        torch.autograd.grad(second[impl][2].sum(), leaves[impl][2])
    # through a critic: a linear critic's penalty differentiated twice w.r.t. its weight (the penalty op's
    # second order; a fused layer's would raise) equals the reference's
    a0 = torch.randn(4, device=device)
    got = {}
    for which in (impl, "ref"):
        torch.manual_seed(0)
        a = a0.clone().requires_grad_()
        p = gradient_penalty(lambda x: x @ a, real, fake, impl=which)
        (da,) = torch.autograd.grad(p, a, create_graph=True)
        (got[which],) = torch.autograd.grad(da.sum(), a)
    assert_close(got[impl], got["ref"], name="second derivative of the penalty w.r.t. the critic's weight")
    assert "second derivatives only" in THIRD_ORDER_MESSAGE


@pytest.mark.parametrize("impl,device", all_backend_params())
def test_deterministic(impl, device):
    g = torch.randn(6, 3, 50, 50, device=device)
    v1, n1 = penalty_from_grad(g, return_norms=True, impl=impl)
    v2, n2 = penalty_from_grad(g, return_norms=True, impl=impl)
    assert torch.equal(v1, v2) and torch.equal(n1, n2)


@pytest.mark.parametrize("impl,device", all_backend_params())
def test_fake_impls_match_the_kernels(impl, device):
    """The meta kernels registered for the CUDA ops (``fastgan.ops._fake_penalty``) give the
    shapes, dtypes and strides the kernels give."""
    from fastgan.ops._fake_penalty import FAKES

    k = _backend.kernels(impl, "penalty")
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        g = torch.randn(3, 2, 4, 5, device=device).to(dtype).to(memory_format=torch.channels_last)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        eps, go = torch.rand(3, device=device, dtype=acc), torch.ones((), device=device, dtype=acc)
        value, norms = k.penalty_forward(g, 0, 1.0)
        calls = {
            "penalty_interpolate": (g, g, eps),
            "penalty_interpolate_backward": (g, eps, True, False),
            "penalty_epsilon_grad": (g, g, g),
            "penalty_forward": (g, 0, 1.0),
            "penalty_backward": (go, g, norms, 0, 1.0),
        }
        assert set(calls) == set(FAKES)
        for name, args in calls.items():
            real = getattr(k, name)(*args)
            fake = FAKES[name](*args)
            for r, f in zip(real if isinstance(real, tuple) else (real,), fake if isinstance(fake, tuple) else (fake,)):
                assert (r.shape, r.dtype, r.stride()) == (f.shape, f.dtype, f.stride()), name


def test_op_errors():
    with pytest.raises(ValueError, match="mode must be one of"):
        penalty_from_grad(torch.randn(2, 3), "both")
    with pytest.raises(TypeError, match="grad must be a floating tensor"):
        penalty_from_grad(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="at least one sample"):
        penalty_from_grad(torch.randn(0, 3))
    with pytest.raises(ValueError, match="fake must have real's shape"):
        interpolate(torch.randn(2, 3), torch.randn(2, 4), 0.5)
    with pytest.raises(ValueError, match="one value per sample"):
        interpolate(torch.randn(2, 3), torch.randn(2, 3), torch.rand(3))
    with pytest.raises(TypeError, match="fake must have real's dtype"):
        interpolate(torch.randn(2, 3), torch.randn(2, 3, dtype=torch.float64), 0.5)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="epsilon must be finite"):
            interpolate(torch.randn(2, 3), torch.randn(2, 3), bad)


# ----------------------------------------------------------------------------- formulas on known gradients


def linear_critic(a, b=0.5):
    """critic(x) = <a, x_i> + b: every sample's gradient is a, so ||g_i|| = ||a||."""
    return lambda x: x.flatten(1) @ a.flatten() + b


@pytest.mark.parametrize("impl,device", impls_with_ref())
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("norm_a", [0.6, 1.7])
def test_linear_critic_exact_value_and_gradient(impl, device, kind, norm_a):
    a0 = torch.randn(3, 4, 4, dtype=torch.float64)
    a = (a0 / a0.norm() * norm_a).to(device=device, dtype=torch.float32).requires_grad_()
    real, fake = torch.randn(5, 3, 4, 4, device=device), torch.randn(5, 3, 4, 4, device=device)
    value = gradient_penalty(linear_critic(a), real, fake, kind, impl=impl)
    n = a.detach().double().norm()
    expected, d_expected = {  # value and d value / d a, by hand
        "wgan-gp": (10 * (n - 1) ** 2, 20 * (n - 1) / n),
        "dragan": (10 * (n - 1) ** 2, 20 * (n - 1) / n),
        "wgan-lp": (10 * max(n - 1, 0) ** 2, 20 * max(n - 1, 0) / n),
        "r1": (5 * n**2, 10.0),
        "r2": (5 * n**2, 10.0),
    }[kind]
    (da,) = torch.autograd.grad(value, a)
    # expected is a plain 0 where wgan-lp's hinge is flat, else a tensor on a's device
    assert_close(value.double(), torch.as_tensor(expected, dtype=torch.float64, device=device), torch.float32,
                 name="value")
    assert_close(da, (d_expected * a.detach().double()).float(), name="d/da")


@pytest.mark.parametrize("impl,device", impls_with_ref())
def test_per_sample_norms_quadratic_critic(impl, device):
    """critic(x) = c/2 ||x_i||^2: g_i = c x_i, so every sample has its own norm."""
    c = 0.7
    real, fake = torch.randn(6, 2, 3, 3, device=device), torch.randn(6, 2, 3, 3, device=device)
    eps = torch.rand(6, device=device)
    critic = lambda x: 0.5 * c * x.flatten(1).square().sum(1)  # noqa: E731
    x_hat = eps.view(-1, 1, 1, 1) * real + (1 - eps.view(-1, 1, 1, 1)) * fake
    norms_hat = c * x_hat.flatten(1).norm(dim=1)
    norms_real = c * real.flatten(1).norm(dim=1)
    norms_fake = c * fake.flatten(1).norm(dim=1)
    expected = {
        "wgan-gp": 3.0 * ((norms_hat - 1) ** 2).mean(),
        "wgan-lp": 3.0 * torch.relu(norms_hat - 1).square().mean(),
        "r1": 1.5 * norms_real.square().mean(),
        "r2": 1.5 * norms_fake.square().mean(),
    }
    for kind, e in expected.items():
        v, norms = gradient_penalty(critic, real, fake, kind, weight=3.0, epsilon=eps, return_norms=True, impl=impl)
        assert_close(v, e, name=kind)
        assert_close(norms, norms_real if kind == "r1" else norms_fake if kind == "r2" else norms_hat, name=kind)
    # DRAGAN: epsilon = 0 penalises the reals themselves; center moves the target norm
    v = gradient_penalty(critic, real, kind="dragan", epsilon=0.0, center=2.0, impl=impl)
    assert_close(v, 10 * ((norms_real - 2) ** 2).mean(), name="dragan")


@pytest.mark.parametrize("impl,device", impls_with_ref())
@pytest.mark.parametrize("kind", list(KINDS))
def test_zero_gradient_gives_no_nan(impl, device, kind):
    a = torch.zeros(2, 3, 3, device=device, requires_grad=True)
    real, fake = torch.randn(4, 2, 3, 3, device=device), torch.randn(4, 2, 3, 3, device=device)
    value = gradient_penalty(linear_critic(a), real, fake, kind, impl=impl)
    (da,) = torch.autograd.grad(value, a)
    expected = {"wgan-gp": 10.0, "dragan": 10.0, "wgan-lp": 0.0, "r1": 0.0, "r2": 0.0}[kind]
    assert float(value.detach()) == expected
    assert torch.isfinite(da).all() and torch.all(da == 0)


def test_dragan_perturbation_follows_the_authors_code():
    """x_p = x + 0.5 * std(x) * U[0, 1) (population std of the batch), then x + alpha (x_p - x)."""
    real = torch.randn(8, 3, 4, 4) * 3 + 1
    xp = perturb(real, 0.5, torch.Generator().manual_seed(3))
    noise = torch.rand(real.shape, generator=torch.Generator().manual_seed(3))
    assert_close(xp, real + 0.5 * real.std(unbiased=False) * noise)
    assert torch.all(xp >= real) and torch.all(xp - real < 0.5 * real.std(unbiased=False) + 1e-6)
    seen = []
    gradient_penalty(lambda x: seen.append(x.detach()) or x.flatten(1).sum(1), real, kind="dragan",
                     epsilon=1.0, generator=torch.Generator().manual_seed(3))
    assert_close(seen[0], xp)


def test_critic_inputs_outputs_labels_and_tuple_heads():
    a = torch.randn(12, requires_grad=True)
    real, fake, labels = torch.randn(3, 12), torch.randn(3, 12), torch.tensor([0, 1, 2])
    expected = gradient_penalty(lambda x: x @ a, real, fake, epsilon=0.3)

    def acgan(x, y):  # AC-GAN: (real/fake score, class logits)
        assert torch.equal(y, labels)
        return x @ a, torch.stack([x.sum(1) * k for k in range(3)], 1)

    assert_close(gradient_penalty(acgan, real, fake, labels=labels, epsilon=0.3), expected)
    assert_close(gradient_penalty(acgan, real, fake, labels=labels, epsilon=0.3, output=lambda o: o[0]), expected)
    assert_close(gradient_penalty(lambda x: {"score": x @ a}, real, fake, epsilon=0.3, output="score"), expected)
    assert_close(gradient_penalty(lambda x, scale: scale * (x @ a), real, fake, epsilon=0.3,
                                  critic_kwargs={"scale": 1.0}), expected)
    # (N, 1) scores and a patch critic's (N, k) scores (summed per sample)
    assert_close(gradient_penalty(lambda x: (x @ a)[:, None], real, fake, epsilon=0.3), expected)
    # the inputs are detached: the penalty trains only the critic
    fake_g = fake.clone().requires_grad_()
    gradient_penalty(lambda x: x @ a, real, fake_g, epsilon=0.3).backward()
    assert fake_g.grad is None and a.grad is not None
    # ... unless asked otherwise
    gradient_penalty(lambda x: x @ a + x.square().sum(1), real, fake_g, epsilon=0.3, detach_inputs=False).backward()
    assert fake_g.grad is not None


def test_penalty_from_outputs_reuses_one_critic_pass():
    """StyleGAN2's R1: the scores of the loss are reused for the penalty."""
    a = torch.randn(5, requires_grad=True)
    real = torch.randn(4, 5).requires_grad_()
    scores = torch.tanh(real @ a)
    r1 = penalty_from_outputs(scores, real, "r1", weight=2.0)
    (g,) = torch.autograd.grad(torch.tanh(real @ a).sum(), real)
    assert_close(r1, g.square().sum(1).mean())


def test_grad_scaler_scales_and_unscales():
    a = torch.randn(7, requires_grad=True)
    real, fake = torch.randn(4, 7), torch.randn(4, 7)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    plain = gradient_penalty(lambda x: x @ a, real, fake, epsilon=0.5)
    scaled = gradient_penalty(lambda x: x @ a, real, fake, epsilon=0.5, scaler=scaler)
    assert_close(scaled, plain)
    (d_plain,) = torch.autograd.grad(plain, a)
    (d_scaled,) = torch.autograd.grad(scaler.scale(scaled), a)
    assert_close(d_scaled / 2.0**12, d_plain)
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    assert_close(gradient_penalty(lambda x: x @ a, real, fake, epsilon=0.5, scaler=disabled), plain)


def test_gradient_penalty_errors():
    critic = lambda x: x.sum(1)  # noqa: E731
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="kind must be one of"):
        gradient_penalty(critic, x, x, kind="gp")
    with pytest.raises(ValueError, match="needs fake samples"):
        gradient_penalty(critic, x, kind="wgan-gp")
    with pytest.raises(ValueError, match="fake must have real's shape"):
        gradient_penalty(critic, x, torch.randn(3, 5))
    with pytest.raises(ValueError, match="one score"):
        gradient_penalty(lambda t: t.sum(), x, x)
    with pytest.raises(ValueError, match="does not depend on its input"):
        gradient_penalty(lambda t: torch.ones(3, requires_grad=True), x, x)
    with pytest.raises(TypeError, match="real must be a floating tensor"):
        gradient_penalty(critic, torch.ones(3, 4, dtype=torch.int64), kind="r1")
    with pytest.raises(ValueError, match="every must be a positive int"):
        LazyRegularizer(every=0)
    # a negative weight would reward the critic for the gradients the penalty damps; NaN / inf poison the loss
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"weight must be a finite number >= 0 \(or None for the default 10"):
            gradient_penalty(critic, x, x, weight=bad)
        with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
            LazyRegularizer("r1", weight=bad)
    with pytest.raises(TypeError, match="weight must be a float"):
        gradient_penalty(critic, x, x, weight="10")
    assert gradient_penalty(critic, x, x, weight=0) == 0  # weight 0: the penalty switched off, allowed
    with pytest.raises(TypeError, match="critic must be callable"):
        gradient_penalty("D", x, x)
    for detached in (lambda t: torch.ones(3), lambda t: critic(t).detach(), lambda t: critic(t).long()):
        with pytest.raises(ValueError, match="does not depend on its input"):
            gradient_penalty(detached, x, x)


def test_lazy_regularizer():
    a = torch.randn(6, requires_grad=True)
    real = torch.randn(4, 6)
    reg = LazyRegularizer("r1", every=4, weight=2.0)
    expected = gradient_penalty(lambda x: x @ a, real, kind="r1", weight=8.0)
    results = [reg(lambda x: x @ a, real) for _ in range(9)]
    assert [r is not None for r in results] == [True, False, False, False, True, False, False, False, True]
    assert_close(results[4], expected)
    assert reg.due(step=8) and not reg.due(step=3)
    assert reg(lambda x: x @ a, real, step=12) is not None and reg.calls == 9
    lr, betas = reg.optimizer_hparams(0.002, (0.0, 0.99))
    assert math.isclose(lr, 0.002 * 0.8) and math.isclose(betas[1], 0.99**0.8)
    reg2 = LazyRegularizer("r1", every=4)
    reg2.load_state_dict(reg.state_dict())
    assert reg2.calls == 9


# ----------------------------------------------------------------------------- critics of fastgan layers

SLOPE = 0.2


def _norms(name, c, impl):
    """(fastgan module, equivalent plain nn modules) of a normalisation + LeakyReLU."""
    act = nn.LeakyReLU(SLOPE)
    if name == "batch":
        return BatchNormAct2d(c, impl=impl), [nn.BatchNorm2d(c), act]
    if name == "group":
        return GroupNormAct(2, c, impl=impl), [nn.GroupNorm(2, c), act]
    if name == "instance":
        return InstanceNormAct2d(c, affine=True, impl=impl), [nn.InstanceNorm2d(c, affine=True), act]
    if name == "layer":
        return LayerNormAct2d(c, impl=impl), [nn.GroupNorm(1, c), act]
    raise ValueError(name)


class PlainMinibatchStdDev(nn.Module):
    """ProGAN's layer written out (StyleGAN's MinibatchStdLayer, one feature map)."""

    def __init__(self, group_size):
        super().__init__()
        self.group_size = group_size

    def forward(self, x):
        n, g = x.shape[0], self.group_size
        y = x.reshape(g, n // g, *x.shape[1:])
        y = ((y - y.mean(0)).square().mean(0) + 1e-8).sqrt().mean([1, 2, 3])
        return torch.cat([x, y.reshape(-1, 1, 1, 1).repeat(g, 1, *x.shape[2:])], 1)


class PlainMinibatchDiscrimination(nn.Module):
    """Salimans et al.'s features, materialising the N x N x B x C differences."""

    def __init__(self, in_features, num_kernels, kernel_dim):
        super().__init__()
        self.T = nn.Parameter(torch.empty(in_features, num_kernels, kernel_dim))

    def forward(self, x):
        m = torch.einsum("nf,fbc->nbc", x, self.T)
        o = torch.exp(-(m[:, None] - m[None]).abs().sum(-1)).sum(1)
        return torch.cat([x, o], 1)


def make_critics(norm, impl, device, c=4, dtype=torch.float32):
    """The same critic twice, of fastgan layers and of plain nn layers, and how many
    fused norm layers (double backward kernels) and minibatch layers it has.

    norm critics: conv -> norm+act -> strided conv -> norm+act -> linear;
    "minibatch": conv -> LayerNormAct -> MinibatchStdDev -> strided conv ->
    MinibatchDiscrimination -> linear."""
    if norm == "minibatch":
        from fastgan.nn.minibatch import MinibatchDiscrimination, MinibatchStdDev

        f1, p1 = _norms("layer", c, impl)
        fused = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), f1, MinibatchStdDev(group_size=2),
                              nn.Conv2d(c + 1, c, 3, stride=2), nn.Flatten(),
                              MinibatchDiscrimination(4 * c, 3, 2, impl=impl), nn.Linear(4 * c + 3, 1))
        plain = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), *p1, PlainMinibatchStdDev(2),
                              nn.Conv2d(c + 1, c, 3, stride=2), nn.Flatten(),
                              PlainMinibatchDiscrimination(4 * c, 3, 2), nn.Linear(4 * c + 3, 1))
        with torch.no_grad():
            fused[5].T.normal_(0.0, 0.3)  # pairwise features well away from 0 and N
        norm_layers, minibatch_layers = (f1,), 1
    else:
        f1, p1 = _norms(norm, c, impl)
        f2, p2 = _norms(norm, c, impl)
        fused = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), f1, nn.Conv2d(c, c, 3, stride=2), f2,
                              nn.Flatten(), nn.Linear(4 * c, 1))
        plain = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), *p1, nn.Conv2d(c, c, 3, stride=2), *p2,
                              nn.Flatten(), nn.Linear(4 * c, 1))
        norm_layers, minibatch_layers = (f1, f2), 0
    with torch.no_grad():
        for m in norm_layers:  # non-trivial affine parameters (convs keep nn's default init)
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.3)
        for pf, pp in zip(fused.parameters(), plain.parameters(), strict=True):
            pp.copy_(pf)
    return fused.to(device, dtype), plain.to(device, dtype), (len(norm_layers), minibatch_layers)


def penalty_and_grads(critic, real, fake, kind, impl, eps, center):
    torch.manual_seed(7)  # the same DRAGAN noise for both critics
    value = gradient_penalty(critic, real, fake, kind, epsilon=eps, center=center, impl=impl)
    return value.detach(), grads_or_zeros(value, list(critic.parameters()))


def compare_critics(norm, kind, impl, device, center=1.0, dtype=torch.float32, channels_last=False):
    fused, plain, layers = make_critics(norm, impl, device, dtype=dtype)
    real = torch.randn(4, 3, 6, 6, device=device, dtype=dtype)
    fake = torch.randn(4, 3, 6, 6, device=device, dtype=dtype)
    if channels_last:
        real, fake = (t.to(memory_format=torch.channels_last) for t in (real, fake))
        fused, plain = fused.to(memory_format=torch.channels_last), plain.to(memory_format=torch.channels_last)
    eps = torch.rand(4, device=device, dtype=dtype)
    ev, egrads = penalty_and_grads(plain, real, fake, kind, "ref", eps, center)
    return (fused, real, fake, eps, center, layers), (ev, egrads)


@pytest.mark.parametrize("norm", ["batch", "group", "instance", "layer", "minibatch"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_ref_critic_matches_plain_nn(norm, kind):
    """In float64, where two exact algorithms must agree to ~1e-10."""
    (fused, real, fake, eps, center, _), (ev, egrads) = compare_critics(norm, kind, "ref", "cpu", 0.2,
                                                                        torch.float64)
    v, grads = penalty_and_grads(fused, real, fake, kind, "ref", eps, center)
    assert ev > 0
    assert_close(v, ev, name="penalty")
    for i, (a, e) in enumerate(zip(grads, egrads)):
        assert_close(a, e, name=f"grad of parameter {i}")


class CountingKernels:
    """Wraps a Triton kernels module and counts the calls per kernel (Python functions, which only
    a wrapper sees)."""

    def __init__(self, inner, counts):
        self._inner, self._counts = inner, counts

    def __getattr__(self, name):
        fn = getattr(self._inner, name)

        def counted(*args, **kwargs):
            self._counts[name] += 1
            return fn(*args, **kwargs)

        return counted


class CountingOps(TorchDispatchMode):
    """Counts the calls of torch.ops.fastgan* ops by name, wherever they come from: the C++ autograd of
    torch.ops.fastgan.norm_act calls the kernels' ops from C++, which no Python wrapper sees."""

    def __init__(self, counts):
        super().__init__()
        self._counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace.startswith("fastgan"):
            self._counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _raise_ref(*args, **kwargs):
    raise AssertionError("the reference implementation ran on the fast path")


# Each normalisation with one kind (under the interpreter every case costs seconds);
# channels-last activations (tiled along C: fewer interpreted programs) for three of them,
# per-sample NC* segments in the minibatch critic's layer norm.
FAST_CASES = [("batch", "r1", 1.0, False), ("group", "wgan-lp", 0.2, True), ("instance", "dragan", 1.0, True),
              ("layer", "wgan-gp", 1.0, True), ("minibatch", "wgan-gp", 1.0, False)]


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("norm,kind,center,channels_last", FAST_CASES,
                         ids=[f"{n}-{k}" + ("-channels_last" if cl else "") for n, k, _, cl in FAST_CASES])
def test_fast_critic_matches_plain_nn_and_takes_the_fast_path(impl, device, norm, kind, center, channels_last,
                                                              monkeypatch):
    """Penalty value and the gradient of every critic parameter equal the plain critic's,
    with every reference implementation made to raise and the fused kernels counted:
    the double backward of each fastgan layer and the penalty's backward run fused."""
    (fused, real, fake, eps, center, (norms, minibatch)), (ev, egrads) = compare_critics(
        norm, kind, impl, device, center, channels_last=channels_last)
    counts = collections.Counter()
    if impl == "triton":
        real_kernels = _backend.kernels
        monkeypatch.setattr(_backend, "kernels",
                            lambda backend, op: CountingKernels(real_kernels(backend, op), counts))
    for name in ("batch_norm_act", "group_norm_act", "instance_norm_act", "layer_norm_act",
                 "minibatch_discrimination"):
        monkeypatch.setattr(fastgan.reference, name, _raise_ref)
    monkeypatch.setattr(fastgan.reference.penalty, "interpolate", _raise_ref)
    monkeypatch.setattr(fastgan.reference.penalty, "penalty_from_grad", _raise_ref)

    with contextlib.nullcontext() if impl == "triton" else CountingOps(counts):
        v, grads = penalty_and_grads(fused, real, fake, kind, impl, eps, center)
    assert ev > 0
    assert_close(v, ev, name="penalty")
    # The parameters' gradients are second derivatives of the critic (the penalty is a
    # function of its first derivatives), computed in float32 by different algorithms
    # through two normalisations: 4x the float32 tolerance, as the norm tests' second order.
    for i, (a, e) in enumerate(zip(grads, egrads)):
        assert_close(a, e, scale=4.0, name=f"grad of parameter {i}")
    # each layer's forward, backward (create_graph) and double backward fused (penalty.backward()
    # also runs the plain backward of layers on the forward path of the double backward's inputs)
    assert counts["norm_act_forward"] == norms
    assert counts["norm_act_backward_apply"] >= norms
    assert counts["norm_act_double_reduce"] == norms and counts["norm_act_double_apply"] == norms
    assert counts["mbd_forward"] == minibatch and counts["mbd_double_backward"] == minibatch
    assert counts["penalty_forward"] == 1 and counts["penalty_backward"] == 1
    assert counts["penalty_interpolate"] == (0 if kind in ("r1", "r2") else 1)
