"""Penalised critic steps: fastgan layers + fused penalty against the same model in eager PyTorch.

``torch.compile`` cannot do double backward, so for a penalised GAN eager
PyTorch is the only baseline (records use case ``double_backward``, where the
GPU suite shows compile as n/a).

Cases (one full critic optimisation step each: zero_grad, forward on real and
fake, penalty with ``create_graph=True``, backward, Adam step):

* ``wgan_gp_step``  WGAN-GP (Gulrajani et al.): loss = D(fake) - D(real)
  + 10 * mean_i(||grad D(x_hat_i)|| - 1)^2 on random interpolates; the critic
  is DCGAN-64's discriminator (ndf = 64, 4x4 stride-2 convs, LeakyReLU 0.2)
  with ``LayerNormAct2d`` (variant ``dcgan64-layer``) or ``GroupNormAct(32, c)``
  (variant ``dcgan64-group``) where DCGAN has batch norm.  One generator
  update follows every n_critic = 5 such steps: the time per critic step is
  what n_critic multiplies.
* ``r1_step``       non-saturating loss + R1 (gamma = 10) on the reals, the
  scores of the reals reused for the penalty (``penalty_from_outputs``), same
  critic with ``LayerNormAct2d``.

fastgan (``impl`` cuda / triton; ``ref`` in CPU smoke runs) uses its fused
layers and ``fastgan.penalties``; ``eager`` is the same model built from
``nn.GroupNorm`` + ``nn.LeakyReLU`` with the penalty written in plain
PyTorch.  Batches 64 / 128 / 256 at 64x64 on a GPU; a 16x16 critic with
ndf = 4 in CPU smoke mode.  Timing, memory and the record schema:
``benchmarks/conftest.py``.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
from fastgan.penalties import gradient_penalty, penalty_from_outputs

SLOPE = 0.2
N_CRITIC = 5
TARGETS = {"vs_eager": 1.3}

SHAPES = [("b64", (64, 3, 64, 64)), ("b128", (128, 3, 64, 64)), ("b256", (256, 3, 64, 64))]
SMOKE_SHAPES = [("tiny", (2, 3, 16, 16))]
DTYPES = SMOKE_DTYPES = (torch.float32,)


def critic_model(impl: str, norm: str, image_size: int, ndf: int) -> nn.Sequential:
    """DCGAN's discriminator for ``image_size`` (a power of two >= 8) with a per-sample norm."""
    layers: list[nn.Module] = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(SLOPE)]
    c, size = ndf, image_size // 2
    while size > 4:
        layers.append(nn.Conv2d(c, 2 * c, 4, 2, 1, bias=False))
        c, size = 2 * c, size // 2
        groups = 1 if norm == "layer" else math.gcd(32, c)
        if impl == "eager":
            layers += [nn.GroupNorm(groups, c), nn.LeakyReLU(SLOPE)]
        else:
            layers.append(fastgan.nn.GroupNormAct(groups, c, activation="leaky_relu", negative_slope=SLOPE,
                                                  impl=impl))
    layers += [nn.Conv2d(c, 1, 4, 1, 0), nn.Flatten()]
    return nn.Sequential(*layers)


def _setup(impl, shape, device, smoke, norm="layer"):
    torch.manual_seed(0)
    critic = critic_model(impl, norm, shape[-1], 4 if smoke else 64).to(device)
    opt = torch.optim.Adam(critic.parameters(), lr=1e-4, betas=(0.5, 0.9))
    real = torch.randn(shape, device=device)
    fake = torch.randn(shape, device=device)
    return critic, opt, real, fake


def _rounds(smoke, impl):
    """One timed round for a whole critic step under the Triton interpreter (seconds each)."""
    return 1 if smoke and impl == "triton" else None


def eager_wgan_gp(critic, real, fake, weight=10.0):
    """The usual PyTorch formulation (the baseline)."""
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    x = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return weight * ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()


@pytest.mark.impls("fastgan", "eager")
@pytest.mark.parametrize("norm", ["layer", "group"])
def test_wgan_gp_critic_step(bench, device, smoke, impl, label, shape, dtype, norm):
    if smoke and impl == "triton" and norm != "layer":
        pytest.skip("CPU smoke: the Triton interpreter runs one critic variant only (seconds per step)")
    critic, opt, real, fake = _setup(impl, shape, device, smoke, norm)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = critic(fake).mean() - critic(real).mean()
        if impl == "eager":
            loss = loss + eager_wgan_gp(critic, real, fake)
        else:
            loss = loss + gradient_penalty(critic, real, fake, "wgan-gp", impl=impl)
        loss.backward()
        opt.step()
        return loss.detach()

    bench(step, op="wgan_gp_step", case="double_backward", shape=shape, dtype=dtype, impl=impl,
          variant=f"dcgan64-{norm}" if not smoke else f"smoke-{norm}",
          targets=TARGETS if impl in ("cuda", "triton") else None,
          notes=f"one critic step (of n_critic={N_CRITIC}): forward real+fake, WGAN-GP, backward, Adam",
          rounds=_rounds(smoke, impl))


@pytest.mark.impls("fastgan", "eager")
def test_r1_critic_step(bench, device, smoke, impl, label, shape, dtype):
    critic, opt, real, fake = _setup(impl, shape, device, smoke)

    def step():
        opt.zero_grad(set_to_none=True)
        x = real.detach().requires_grad_(True)
        scores = critic(x)
        if impl == "eager":
            (g,) = torch.autograd.grad(scores.sum(), x, create_graph=True)
            r1 = 5.0 * g.square().flatten(1).sum(1).mean()
        else:
            r1 = penalty_from_outputs(scores, x, "r1", impl=impl)
        loss = F.softplus(-scores).mean() + F.softplus(critic(fake)).mean() + r1
        loss.backward()
        opt.step()
        return loss.detach()

    bench(step, op="r1_step", case="double_backward", shape=shape, dtype=dtype, impl=impl,
          variant="dcgan64-layer" if not smoke else "smoke-layer",
          targets=TARGETS if impl in ("cuda", "triton") else None,
          notes="one critic step: non-saturating loss + R1 (gamma 10) on reals, backward, Adam",
          rounds=_rounds(smoke, impl))


@pytest.mark.impls("cuda", "triton")
@pytest.mark.parametrize("pass_name", ["penalty_forward", "penalty_backward", "interpolate"])
def test_penalty_pass(bench, device, impl, label, shape, dtype, pass_name):
    """The fused penalty passes alone on the critic's input gradient (bandwidth vs a copy)."""
    from fastgan import _backend

    k = _backend.kernels(impl, "penalty")
    g = torch.randn(shape, device=device, dtype=dtype)
    h = torch.randn_like(g)
    eps = torch.rand(shape[0], device=device)
    value, norms = k.penalty_forward(g, 0, 1.0)
    go = torch.ones((), device=device)
    fn, tensors = {
        "penalty_forward": (lambda: k.penalty_forward(g, 0, 1.0), 1),
        "penalty_backward": (lambda: k.penalty_backward(go, g, norms, 0, 1.0), 2),
        "interpolate": (lambda: k.penalty_interpolate(g, h, eps), 3),
    }[pass_name]
    bench(fn, op="gradient_penalty", case=f"pass:{pass_name}", shape=shape, dtype=dtype, impl=impl, variant=label,
          bytes_moved=tensors * g.numel() * g.element_size(), targets={"copy_fraction": 0.8})
