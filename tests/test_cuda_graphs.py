"""CUDA-graph capture: every fastgan layer, the penalties' double backward, and a whole training step.

The contract says every op is capturable (no host syncs, no data-dependent
allocation).  Each GPU case captures forward + backward once, replays it on
a *new* input written into the static buffer, and compares the replay with
an uncaptured ``ref`` computation on that input.  ``GraphedStep``'s argument
checks run on CPU too.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan.nn as fnn
from fastgan.cuda_graph import GraphedStep, check_capturable_optimizers
from fastgan.models.dcgan import DCGANDiscriminator, DCGANGenerator, set_impl
from fastgan.penalties import gradient_penalty

from _fused_layers import fused_layers
from _tolerances import assert_close

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU_IMPLS = [pytest.param(i, marks=[pytest.mark.cuda, needs_cuda]) for i in ("triton", "cuda")]


# ----------------------------------------------------------------------------- argument checks (any machine)


def test_non_capturable_adam_is_named():
    p = nn.Parameter(torch.zeros(3))
    ok = torch.optim.Adam([p], capturable=True)
    check_capturable_optimizers([ok, torch.optim.SGD([p], lr=0.1)])
    with pytest.raises(ValueError, match=r"optimizers\[1\] \(Adam\).*capturable=True"):
        check_capturable_optimizers([ok, torch.optim.Adam([p])])
    with pytest.raises(TypeError, match=r"optimizers\[0\]"):
        check_capturable_optimizers([p])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_graphed_step_without_cuda_says_so():
    with pytest.raises(RuntimeError, match="CUDA"):
        GraphedStep(lambda: None)


def test_graphed_step_checks_its_arguments():
    if not torch.cuda.is_available():
        pytest.skip("the constructor refuses first for lack of CUDA (tested above)")
    with pytest.raises(TypeError, match="step"):
        GraphedStep(3)
    with pytest.raises(ValueError, match="warmup"):
        GraphedStep(lambda: None, warmup=0)


# ----------------------------------------------------------------------------- every layer (GPU)


LAYERS = fused_layers()


def _warm_up(run, times=2):
    """Eager calls on a side stream before capturing: Triton compiles and cuDNN picks algorithms here."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(times):
            run()
    torch.cuda.current_stream().wait_stream(side)


@pytest.mark.parametrize("impl", GPU_IMPLS)
@pytest.mark.parametrize("name,factory,shape", LAYERS, ids=[n for n, _, _ in LAYERS])
def test_layer_forward_backward_is_capturable(impl, name, factory, shape):
    torch.manual_seed(0)
    layer = factory(impl).cuda()
    reference = copy.deepcopy(layer)
    set_impl(reference, "ref")
    x = torch.randn(shape, device="cuda", requires_grad=True)
    params = [p for p in layer.parameters()]

    def run():
        y = layer(x)
        y.float().square().sum().backward()
        return y

    _warm_up(run)
    graph = torch.cuda.CUDAGraph()
    x.grad = None
    for p in params:
        p.grad = None
    with torch.cuda.graph(graph):
        y = run()
    # The replay must read the new input: a graph that baked in the old one would match nothing below.
    with torch.no_grad():
        x.copy_(torch.randn_like(x) * 2 + 0.5)
    state = copy.deepcopy(layer.state_dict())
    graph.replay()
    torch.cuda.synchronize()

    reference.load_state_dict(state)  # same running stats as the layer had before the replay
    xr = x.detach().clone().requires_grad_(True)
    yr = reference(xr)
    yr.float().square().sum().backward()
    assert_close(y, yr)
    assert_close(x.grad, xr.grad)
    for (pname, p), pr in zip(layer.named_parameters(), reference.parameters()):
        assert_close(p.grad, pr.grad, name=f"{name}.{pname}.grad")


@pytest.mark.parametrize("impl", GPU_IMPLS)
def test_virtual_batch_norm_is_capturable(impl):
    torch.manual_seed(0)
    layer = fnn.VirtualBatchNorm2d(6, impl=impl).cuda()
    reference = copy.deepcopy(layer)
    ref_batch = torch.randn(8, 6, 4, 4, device="cuda")
    x = torch.randn(5, 6, 4, 4, device="cuda", requires_grad=True)

    def run():
        with fnn.virtual_batch_reference(layer):
            layer(ref_batch)
        y = layer(x)
        y.square().sum().backward()
        return y

    _warm_up(run)
    graph = torch.cuda.CUDAGraph()
    x.grad = None
    with torch.cuda.graph(graph):
        y = run()
    with torch.no_grad():
        x.copy_(torch.randn_like(x))
        ref_batch.copy_(torch.randn_like(ref_batch))
    graph.replay()
    torch.cuda.synchronize()

    reference.impl = "ref"
    xr = x.detach().clone().requires_grad_(True)
    with fnn.virtual_batch_reference(reference):
        reference(ref_batch)
    yr = reference(xr)
    yr.square().sum().backward()
    assert_close(y, yr)
    assert_close(x.grad, xr.grad)


@pytest.mark.parametrize("impl", GPU_IMPLS)
def test_gradient_penalty_double_backward_is_capturable(impl):
    """The penalty's fused interpolation + norm and the critic's double backward, captured."""
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), fnn.LayerNormAct2d(8, impl=impl),
                           nn.Conv2d(8, 8, 3, stride=2, padding=1), fnn.BatchNormAct2d(8, impl=impl),
                           nn.Flatten(), nn.Linear(8 * 4 * 4, 1)).cuda()
    reference = copy.deepcopy(critic)
    set_impl(reference, "ref")
    real = torch.randn(6, 3, 8, 8, device="cuda")
    fake = torch.randn(6, 3, 8, 8, device="cuda")
    eps = torch.rand(6, device="cuda")

    def run():
        gp = gradient_penalty(critic, real, fake, "wgan-gp", weight=10.0, epsilon=eps, impl=impl)
        gp.backward()
        return gp

    _warm_up(run)
    critic.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        gp = run()
    with torch.no_grad():
        real.copy_(torch.randn_like(real))
        fake.copy_(torch.randn_like(fake))
        eps.copy_(torch.rand_like(eps))
    state = copy.deepcopy(critic.state_dict())
    graph.replay()
    torch.cuda.synchronize()

    reference.load_state_dict(state)
    gp_ref = gradient_penalty(reference, real, fake, "wgan-gp", weight=10.0, epsilon=eps, impl="ref")
    gp_ref.backward()
    assert_close(gp, gp_ref)
    for (name, p), pr in zip(critic.named_parameters(), reference.parameters()):
        # The penalty does not depend on the last layer's bias nor on a norm's bias (a shift the
        # next norm or the input gradient ignores): autograd leaves those grads None, or a fused
        # layer's double backward may give zeros.  Either is "no gradient".
        if p.grad is None or pr.grad is None:
            other = p.grad if pr.grad is None else pr.grad
            assert other is None or not other.any(), f"critic.{name}.grad: one side None, the other {other}"
            continue
        assert_close(p.grad, pr.grad, name=f"critic.{name}.grad")
    assert sum(p.grad is not None for p in critic.parameters()) >= 4, "the penalty reached too few weights"


# ----------------------------------------------------------------------------- a whole training step (GPU)


def _dcgan_pair(impl):
    torch.manual_seed(0)
    g = set_impl(DCGANGenerator(16, 8, 8, norm="batch", fused=True), impl).cuda()
    d = set_impl(DCGANDiscriminator(16, 8, norm="batch", fused=True), impl).cuda()
    return g, d


def _training_step(g, d, real, z):
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999), capturable=True)
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999), capturable=True)

    def step():
        opt_d.zero_grad(set_to_none=True)
        fake = g(z)
        loss_d = F.softplus(-d(real)).mean() + F.softplus(d(fake.detach())).mean()
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        loss_g = F.softplus(-d(fake)).mean()
        loss_g.backward()
        opt_g.step()
        return loss_d.detach(), loss_g.detach()

    return step, (opt_g, opt_d)


@pytest.mark.parametrize("impl", GPU_IMPLS)
def test_graphed_training_step_matches_eager_steps(impl):
    """GraphedStep's warm-up steps + replays train exactly like the same steps run eagerly."""
    g1, d1 = _dcgan_pair(impl)
    g2, d2 = copy.deepcopy(g1), copy.deepcopy(d1)
    real1, z1 = torch.empty(8, 3, 16, 16, device="cuda"), torch.empty(8, 8, device="cuda")
    real2, z2 = torch.empty_like(real1), torch.empty_like(z1)
    eager_step, _ = _training_step(g1, d1, real1, z1)
    step, opts = _training_step(g2, d2, real2, z2)
    graphed = GraphedStep(step, optimizers=opts, warmup=3)
    data = torch.Generator().manual_seed(1)

    def feed(*buffers):
        batch = torch.randn(8, 3, 16, 16, generator=data).clamp_(-1, 1), torch.randn(8, 8, generator=data)
        for (real, z) in buffers:
            real.copy_(batch[0])
            z.copy_(batch[1])

    feed((real1, z1), (real2, z2))
    for _ in range(3):  # the warm-up runs three real steps on the same batch
        eager_step()
    graphed()
    assert graphed.captured and graphed.replays == 0
    for _ in range(4):
        feed((real1, z1), (real2, z2))
        expected = eager_step()
        got = graphed()
        torch.cuda.synchronize()
        for e, o in zip(expected, got):
            assert_close(o, e, scale=10)  # reason: atomics order may differ between runs
    assert graphed.replays == 4
    for (name, p1), p2 in zip(list(g1.named_parameters()) + list(d1.named_parameters()),
                              list(g2.parameters()) + list(d2.parameters())):
        assert_close(p2, p1, scale=10, name=name)
    for (name, b1), b2 in zip(list(g1.named_buffers()) + list(d1.named_buffers()),
                              list(g2.buffers()) + list(d2.buffers())):
        assert_close(b2.float(), b1.float(), scale=10, name=name)
