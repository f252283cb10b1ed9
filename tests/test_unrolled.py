"""Unrolled GAN (Metz et al. 2017): the differentiable D optimiser steps reproduce torch's SGD / Adam, G's
gradient matches a hand-written pure-PyTorch unrolling, fastgan's fused layers take part (second order
only, for any K), and the trainer option runs."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgan.models import MLPDiscriminator
from fastgan.train.unrolled import check_unrollable, unroll

from conftest import fast_backends


def _d_loss(real, fake):
    def loss(fd):
        return F.softplus(-fd(real)).mean() + F.softplus(fd(fake)).mean()
    return loss


def _g_loss(fd, fake):
    return F.softplus(-fd(fake)).mean()


def _opt(kind, d):
    if kind == "sgd":
        return torch.optim.SGD(d.parameters(), lr=0.05, momentum=0.7, dampening=0.1, weight_decay=1e-3)
    if kind == "adamw":  # (the trainer's D optimiser with optim.weight_decay_d > 0, decoupled)
        return torch.optim.AdamW(d.parameters(), lr=0.01, betas=(0.5, 0.9), weight_decay=0.1)
    return torch.optim.Adam(d.parameters(), lr=0.01, betas=(0.5, 0.9), weight_decay=1e-3)


def _warm(opt, d, real, fake, n=2):
    """Give the optimiser a state (momentum / moments, step count) like a run in progress."""
    for _ in range(n):
        opt.zero_grad()
        _d_loss(real, fake)(d).backward()
        opt.step()


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_one_unrolled_step_is_the_real_optimizer_step(kind):
    d = MLPDiscriminator(in_features=2, hidden=8, depth=2, impl="ref")
    real, fake = torch.randn(16, 2), torch.randn(16, 2)
    opt = _opt(kind, d)
    _warm(opt, d, real, fake)
    before = {n: p.detach().clone() for n, p in d.named_parameters()}
    fd = unroll(d, _d_loss(real, fake), 1, opt)
    for n, p in d.named_parameters():  # unrolling leaves D alone
        assert torch.equal(p, before[n])
    _warm(opt, d, real, fake, n=1)  # the real step with the same loss
    for n, p in d.named_parameters():
        torch.testing.assert_close(fd.params[n], p.detach(), atol=1e-6, rtol=1e-5)


def test_zero_steps_is_the_plain_g_loss():
    d = MLPDiscriminator(in_features=2, hidden=8, depth=2, impl="ref")
    g = nn.Linear(3, 2)
    z, real = torch.randn(16, 3), torch.randn(16, 2)
    opt = _opt("adam", d)
    fake = g(z)
    plain = torch.autograd.grad(_g_loss(d, fake), list(g.parameters()))
    fake = g(z)
    fd = unroll(d, _d_loss(real, fake), 0, opt)
    unrolled = torch.autograd.grad(_g_loss(fd, fake), list(g.parameters()))
    for a, b in zip(plain, unrolled):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------
# A hand-written unrolling: D(x) = w2 . leaky_relu(W1 x + b1) + b2 as raw tensors, torch's update rules by hand
# ----------------------------------------------------------------------------------------------

def _raw_d(w, x):
    return (F.leaky_relu(x @ w[0].T + w[1], 0.2) @ w[2].T + w[3]).reshape(-1)


def _reference_unrolled_g_grad(d_seq, g, z, real, steps, kind, lr, hp):
    w = [p.detach().clone().requires_grad_(True) for p in d_seq.parameters()]
    m = [torch.zeros_like(p) for p in w]
    v = [torch.zeros_like(p) for p in w]
    fake = g(z)
    for t in range(1, steps + 1):
        loss = F.softplus(-_raw_d(w, real)).mean() + F.softplus(_raw_d(w, fake)).mean()
        grads = torch.autograd.grad(loss, w, create_graph=True)
        new = []
        for i, (p, gr) in enumerate(zip(w, grads)):
            if kind == "sgd":
                m[i] = gr if t == 1 else hp["momentum"] * m[i] + gr
                new.append(p - lr * m[i])
            else:
                b1, b2 = hp["betas"]
                m[i] = b1 * m[i] + (1 - b1) * gr
                v[i] = b2 * v[i] + (1 - b2) * gr * gr
                mhat, vhat = m[i] / (1 - b1 ** t), v[i] / (1 - b2 ** t)
                new.append(p - lr * mhat / (vhat.sqrt() + hp["eps"]))
        w = new
    return torch.autograd.grad(F.softplus(-_raw_d(w, fake)).mean(), list(g.parameters()))


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("steps", [1, 3])
def test_g_gradient_matches_a_hand_written_unrolling(kind, steps):
    torch.manual_seed(0)
    d = nn.Sequential(nn.Linear(2, 6), nn.LeakyReLU(0.2), nn.Linear(6, 1)).double()
    g = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    z, real = torch.randn(12, 3, dtype=torch.float64), torch.randn(12, 2, dtype=torch.float64)
    hp = {"momentum": 0.6} if kind == "sgd" else {"betas": (0.5, 0.999), "eps": 1e-8}
    lr = 0.1 if kind == "sgd" else 0.05
    opt = (torch.optim.SGD(d.parameters(), lr=lr, momentum=hp["momentum"]) if kind == "sgd"
           else torch.optim.Adam(d.parameters(), lr=lr, betas=hp["betas"], eps=hp["eps"]))
    expected = _reference_unrolled_g_grad(d, g, z, real, steps, kind, lr, hp)
    fake = g(z)
    fd = unroll(d, lambda f: F.softplus(-f(real).reshape(-1)).mean() + F.softplus(f(fake).reshape(-1)).mean(),
                steps, opt)
    got = torch.autograd.grad(F.softplus(-fd(fake).reshape(-1)).mean(), list(g.parameters()))
    plain = torch.autograd.grad(F.softplus(-d(g(z)).reshape(-1)).mean(), list(g.parameters()))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
    assert max((a - b).abs().max().item() for a, b in zip(got, plain)) > 1e-4  # unrolling changed the gradient


# ----------------------------------------------------------------------------------------------
# Through fastgan's fused layers: second order suffices for any K
# ----------------------------------------------------------------------------------------------

def test_fused_layers_stop_at_second_order():
    """The premise of the next test: a third derivative through a fused layer raises (so if unrolling needed
    one, the unrolled gradient below would fail rather than pass)."""
    from fastgan.nn import BatchNormAct1d

    if not fast_backends():
        pytest.skip("no fast backend here (needs TRITON_INTERPRET=1 or a GPU)")
    impl, device = fast_backends()[0]
    bn = BatchNormAct1d(3, activation="leaky_relu", impl=impl).to(device)
    x = torch.randn(6, 3, device=device, requires_grad=True)
    (h1,) = torch.autograd.grad(bn(x).pow(3).sum(), x, create_graph=True)
    (h2,) = torch.autograd.grad(h1.pow(2).sum(), x, create_graph=True)  # second order: fine
    with pytest.raises(RuntimeError):
        torch.autograd.grad(h2.pow(2).sum(), x)  # third order: refused


@pytest.mark.parametrize("norm,minibatch,depth", [("batch", "none", 2), ("none", "discrimination", 1)])
def test_unrolling_through_fused_layers_matches_ref(norm, minibatch, depth):
    backends = fast_backends()
    if not backends:
        pytest.skip("no fast backend here (needs TRITON_INTERPRET=1 or a GPU)")
    impl, device = backends[0]
    torch.manual_seed(0)
    kw = dict(in_features=2, hidden=8, depth=depth, norm=norm, minibatch=minibatch, minibatch_kernels=3,
              minibatch_kernel_dim=2)
    d_ref = MLPDiscriminator(impl="ref", **kw).to(device)
    d_fast = MLPDiscriminator(impl=impl, **kw).to(device)
    d_fast.load_state_dict(d_ref.state_dict())
    g = nn.Linear(3, 2).to(device)
    z, real = torch.randn(8, 3, device=device), torch.randn(8, 2, device=device)
    grads = []
    for d in (d_ref, d_fast):
        opt = torch.optim.Adam(d.parameters(), lr=0.01, betas=(0.5, 0.999))
        fake = g(z)
        fd = unroll(d, _d_loss(real, fake), 2, opt)
        grads.append(torch.autograd.grad(_g_loss(fd, fake), list(g.parameters())))
    for a, b in zip(*grads):
        assert torch.isfinite(b).all()
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)  # two Adam steps amplify float32 rounding


def test_refuses_virtual_batch_norm_by_name():
    d = MLPDiscriminator(in_features=2, hidden=8, depth=1, norm="vbn", impl="ref")
    with pytest.raises(ValueError, match=r"main\.1 \(VirtualBatchNorm1d\)"):
        check_unrollable(d)
    check_unrollable(MLPDiscriminator(in_features=2, hidden=8, depth=1, norm="batch", impl="ref"))


def test_bad_arguments():
    d = MLPDiscriminator(in_features=2, hidden=4, depth=1, impl="ref")
    with pytest.raises(ValueError, match="steps"):
        unroll(d, lambda fd: fd(torch.randn(4, 2)).sum(), -1, lr=0.1)
    with pytest.raises(ValueError, match="no unrolled rule"):
        unroll(d, lambda fd: fd(torch.randn(4, 2)).sum(), 1, torch.optim.RMSprop(d.parameters()))
