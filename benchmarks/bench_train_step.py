"""Whole GAN training iterations (D step + G step, Adam): fastgan models against the same models in PyTorch.

The op suites time single kernels; this one times what a user feels, one
iteration of a training loop.  Every case builds the models once with seed 0
as fastgan's fused models (``fused=True``), and the baselines load the *same
weights* into the plain-layer models (``fused=False``: ``nn.BatchNorm2d`` +
``nn.ReLU`` / ``nn.LeakyReLU``, ``nn.GroupNorm(1, C)`` + activation): the
state_dict keys are identical.

Cases (op, case):

* ``dcgan_ns_step`` / ``forward_backward``: DCGAN-64 with batch norm
  (``BatchNormAct2d`` when fused), non-saturating loss.  One iteration: G(z);
  D step on real + detached fake (softplus losses), backward, Adam; G step on
  the same fake (``softplus(-D(fake))``), backward, Adam.  Baselines: eager and
  ``torch.compile`` of the G and D forwards (no double backward involved).
* ``dcgan_mbd_step`` / ``forward_backward``: the same with minibatch
  discrimination (Salimans et al. 2016, 32 kernels of 8 dims, mean) before D's
  last layer.  The baselines' minibatch layer is the usual materialising one
  (the N x N x B x C difference tensor) with the same ``T``.
* ``wgan_gp_train_step`` / ``double_backward``: WGAN-GP-64, critic = DCGAN's
  discriminator with layer norm (``LayerNormAct2d`` fused; ``GroupNorm(1, C)``
  plain), generator with batch norm; n_critic = 5 critic steps (loss
  D(fake) - D(real) + 10 * GP on interpolates; fastgan's
  ``fastgan.penalties.gradient_penalty`` vs the usual PyTorch formulation),
  then one generator step.  No ``torch.compile`` baseline: double backward.

* ``dcgan_ns_step`` / ``wgan_gp_train_step`` with variant ``...-graph`` (GPU
  only, batch 64, and 128 without a target): the same iterations captured whole in one CUDA graph with
  ``fastgan.cuda_graph.GraphedStep`` (capturable Adam, autocast without its
  weight cache) and replayed, for fastgan and for the plain eager models.  At
  batch 64 a DCGAN iteration is launch-bound; the record's ``vs_eager``
  compares with the captured eager step and ``vs_eager_plain`` (GPU suite)
  with the uncaptured one, the issue-10 target (2x).

* ``dcgan_ns_step`` with variant ``dcgan64-onepass`` (fastgan impls; ``-onepass-graph``
  captured, GPU only): the D step's two passes as one over ``cat([real, fake.detach()])``
  inside ``fastgan.nn.separate_batches(d, 2)``, each half normalised with its own batch
  statistics -- the two passes' math (``tests/test_segmented_batch_norm.py``) with half the
  convolution launches.  Eager PyTorch has no such layer, so these records compare
  (``vs_eager_plain``) with the eager step a user writes, two D passes; at batch 128 the
  1.3x target is recorded on that ratio too.

* ``dcgan_ns_step`` / ``wgan_gp_train_step`` with variant ``...-cl`` (batch 128;
  fastgan and eager): the same iterations with channels-last (NHWC) weights and
  images in both models, so every activation is NHWC.  cuDNN's tensor-core
  convolutions work in NHWC and wrap NCHW ones in layout transposes; fastgan's
  kernels take either layout.  Which layout the trainer should default to on a
  GPU is read from these records.

Adam is PyTorch's fused one on a GPU (as fastgan's trainer uses; the first GPU run, session 20,
had the default foreach one), for every impl.

``impl`` cuda / triton (fastgan layers on that backend; ``ref`` in CPU smoke
runs), ``eager``, ``compile``.  GPU: batch 64, 128 and 256 at 64x64, float32 and
bfloat16 autocast (``dtype`` is the autocast dtype; weights, Adam state and
losses stay float32).  ``notes`` say what an iteration is; after the case,
``benchmark.extra_info["images_per_s"]`` = batch / median step time (the
JSON the GPU suite reads).  Targets from issue 10: 1.3x eager for DCGAN and
WGAN-GP at batch 128 (NCHW and channels-last each against eager in the same
layout), 2x the uncaptured eager DCGAN step with CUDA graphs at batch 64.

Order: the GPU suite may cut this file at its share of the time budget, so
``case_priority`` runs the judged cases first (float32, then bfloat16; CUDA,
then Triton), then the other sizes, minibatch discrimination and channels-last,
and the ``torch.compile`` baselines last.

GPU time estimate (H100, excluding Inductor / Triton compilation): 3 sizes x
2 dtypes x (4 + 4 + 3 impls) = 66 cases plus 2 dtypes x (3 + 3) = 12 graph
cases and 2 dtypes x (3 + 3) = 12 channels-last cases; a DCGAN-64 iteration is
~3-30 ms and a WGAN-GP iteration (5 critic steps with double backward + 1 G
step) ~20-160 ms, timed with a 5 + 25 ms
do_bench window plus warm-up, peak-memory and 3 pedantic rounds: ~0.1-0.3 s
per DCGAN case and ~0.5-1.5 s per WGAN-GP case, ~40 s in all.

CPU smoke mode: 16x16 images, ngf = ndf = 4, nz = 8, batch 4, float32, one
round; Triton (only under ``TRITON_INTERPRET=1``) runs the DCGAN step once and
skips the minibatch and WGAN-GP steps (~8 s and ~45 s interpreted on a CI
machine; the plain DCGAN step ~5 s).  Timing, memory and the record schema:
``benchmarks/conftest.py``.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgan.models.dcgan import DCGANDiscriminator, DCGANGenerator, set_impl
from fastgan.nn import MinibatchDiscrimination, separate_batches
from fastgan.penalties import gradient_penalty

N_CRITIC = 5
GP_WEIGHT = 10.0
MBD_KERNELS, MBD_DIM = 32, 8
TARGETS = {"vs_eager": 1.3}
# With the whole step captured in a CUDA graph, against the plain (uncaptured) eager step.
GRAPH_TARGETS = {"vs_eager_plain": 2.0}
GRAPH_BATCH = 64
# Captured at the target batch too (no target of its own): what a user of fastgan.cuda_graph gets at 128,
# next to the uncaptured eager step the 1.3x target compares with.
GRAPH_EXTRA_BATCHES = (128,)
TARGET_BATCH_LABEL = "b128"

SHAPES = [("b64", (64, 3, 64, 64)), ("b128", (128, 3, 64, 64)), ("b256", (256, 3, 64, 64))]
SMOKE_SHAPES = [("tiny", (4, 3, 16, 16))]
DTYPES = (torch.float32, torch.bfloat16)
SMOKE_DTYPES = (torch.float32,)


def case_priority(test_name, params):
    """Run order (benchmarks/conftest.py, Order): the GPU suite may cut this file at its time share, so
    the cases issue 10's targets judge go first, float32 and the CUDA backend before bfloat16 and
    Triton; the unjudged sizes, the minibatch step, channels-last and, last, the ``torch.compile``
    baselines (minutes of Inductor compilation) after them."""
    impl, label, dtype = params.get("impl"), params.get("label"), params.get("dtype")
    graph, mbd = test_name.endswith("_cuda_graph"), "minibatch" in test_name
    if graph:  # (captured cases run at GRAPH_BATCH and GRAPH_EXTRA_BATCHES only)
        judged = label == f"b{GRAPH_BATCH}"
    else:  # plain eager at GRAPH_BATCH: the captured step's vs_eager_plain
        judged = label == TARGET_BATCH_LABEL or (label == f"b{GRAPH_BATCH}" and impl == "eager" and not mbd)
    return (impl == "compile", "channels_last" in test_name, mbd, not judged, dtype != torch.float32,
            impl == "triton")


def _widths(smoke):
    """(nz, ngf, ndf)."""
    return (8, 4, 4) if smoke else (100, 64, 64)


class NaiveMinibatchDiscrimination(nn.Module):
    """The materialising layer every public implementation uses, with fastgan's ``T`` and output layout."""

    def __init__(self, layer: MinibatchDiscrimination):
        super().__init__()
        self.in_features, self.num_kernels, self.kernel_dim = layer.in_features, layer.num_kernels, layer.kernel_dim
        self.T = nn.Parameter(layer.T.detach().clone())

    def forward(self, x):
        x = x.flatten(1)
        n = x.shape[0]
        m = (x @ self.T.reshape(self.in_features, -1)).reshape(n, self.num_kernels, self.kernel_dim)
        o = torch.exp(-(m.unsqueeze(1) - m.unsqueeze(0)).abs().sum(dim=-1)).sum(dim=1) / n
        return torch.cat([x, o.to(x.dtype)], dim=1)


def _models(impl, shape, device, smoke, d_norm="batch", minibatch="none", channels_last=False):
    """(G, D): fused fastgan models for fastgan impls, else plain models with the same weights."""
    nz, ngf, ndf = _widths(smoke)
    size = shape[-1]
    torch.manual_seed(0)
    g = DCGANGenerator(size, nz, ngf, norm="batch", fused=True, impl="ref")
    d = DCGANDiscriminator(size, ndf, norm=d_norm, fused=True, impl="ref", minibatch=minibatch,
                           minibatch_kernels=MBD_KERNELS, minibatch_kernel_dim=MBD_DIM)
    if impl in ("eager", "compile"):
        pg = DCGANGenerator(size, nz, ngf, norm="batch", fused=False, init=False)
        pd = DCGANDiscriminator(size, ndf, norm=d_norm, fused=False, init=False, minibatch=minibatch,
                                minibatch_kernels=MBD_KERNELS, minibatch_kernel_dim=MBD_DIM)
        pg.load_state_dict(g.state_dict())
        pd.load_state_dict(d.state_dict())
        for i, m in enumerate(pd.main):
            if isinstance(m, MinibatchDiscrimination):
                pd.main[i] = NaiveMinibatchDiscrimination(m)
        g, d = pg, pd
    else:
        set_impl(g, impl)
        set_impl(d, impl)
    g, d = g.to(device), d.to(device)
    if channels_last:  # NHWC weights make every convolution (and so every activation) channels-last too
        g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
    return g, d, nz


def _autocast(device, dtype, graph=False):
    if dtype == torch.float32:
        return contextlib.nullcontext
    # Autocast's weight-cast cache would hold tensors from outside the capture.
    return lambda: torch.autocast(device.type, dtype=dtype, cache_enabled=not graph)


def _adam(model, betas=(0.5, 0.999), graph=False):
    # capturable=True keeps Adam's step count on the GPU (no host sync), as capture needs.  On a GPU the
    # fused Adam (one or two launches per step instead of a dozen foreach ones), as fastgan's trainer
    # uses, for every impl alike.
    fused = all(p.is_cuda for p in model.parameters())
    return torch.optim.Adam(model.parameters(), lr=2e-4, betas=betas, capturable=graph, fused=fused or None)


def _graph_step(step, graph, optimizers):
    """``step`` itself, or (``graph``) the step captured whole in a CUDA graph and replayed."""
    if not graph:
        return step
    from fastgan.cuda_graph import GraphedStep
    return GraphedStep(step, optimizers=optimizers)


def _skip_graph_case(smoke, impl, shape):
    if smoke:
        pytest.skip("CUDA graphs need a GPU (the CPU smoke run has none)")
    if shape[0] != GRAPH_BATCH and shape[0] not in GRAPH_EXTRA_BATCHES:
        pytest.skip(f"CUDA-graph cases run at batch {GRAPH_BATCH} (where launch overhead matters) and "
                    f"{', '.join(map(str, GRAPH_EXTRA_BATCHES))}")


def _skip_channels_last_case(smoke, impl, label):
    if smoke and impl == "triton":
        pytest.skip("CPU smoke: the Triton interpreter runs the plain DCGAN step only")
    if not smoke and label != TARGET_BATCH_LABEL:
        pytest.skip(f"channels-last cases run at the target batch ({TARGET_BATCH_LABEL}) only")


def _real_batch(shape, device, channels_last):
    real = torch.randn(shape, device=device).clamp_(-1, 1)
    return real.contiguous(memory_format=torch.channels_last) if channels_last else real


def _targets(impl, label, smoke, graph):
    """Issue 10's targets, on the fastgan records they are stated for: batch 128, or 64 captured."""
    if impl not in ("cuda", "triton") or smoke:
        return None
    if graph:
        return GRAPH_TARGETS if label == f"b{GRAPH_BATCH}" else None
    return TARGETS if label == TARGET_BATCH_LABEL else None


def _record_throughput(bench, record, batch):
    if record.get("median_ms"):
        ips = round(batch / (record["median_ms"] * 1e-3), 3)
        record["images_per_s"] = ips
        bench.benchmark.extra_info["images_per_s"] = ips


def _measure_step(bench, step, optimizers, graph, smoke, batch, *, variant, what, dtype, channels_last=False,
                  eager_variant=None, **case):
    """Time one iteration (captured in a CUDA graph with ``graph``) and record images/s.  ``eager_variant``:
    the eager record this one is compared with when eager has no record of its own variant."""
    extra = {}
    if graph or eager_variant is not None:
        # the GPU suite also compares with that (uncaptured) eager step: vs_eager_plain
        extra = {"plain_variant": eager_variant or variant}
    if graph:
        variant += "-graph"
    if channels_last:
        variant += "-cl"
    notes = (f"one iteration: {what}; {_precision(dtype)}; "
             + ("whole step captured in one CUDA graph (capturable Adam), replayed; " if graph else "")
             + ("weights, images and activations channels-last (NHWC) in both models; " if channels_last else "")
             + "images/s = batch / median_ms in extra_info")
    record = bench(_graph_step(step, graph, optimizers), dtype=dtype, variant=variant, extra=extra, notes=notes,
                   rounds=1 if smoke else None, **case)
    _record_throughput(bench, record, batch)


def _precision(dtype):
    return "autocast " + str(dtype).replace("torch.", "") if dtype != torch.float32 else "fp32"


def dcgan_step(g, d, opt_g, opt_d, real, z, amp, one_pass=False):
    """One non-saturating DCGAN iteration: D step on real + detached fake, then G step on the same fake.
    ``one_pass``: the D step's two passes as one over both batches, each normalised with its own
    statistics (``fastgan.nn.separate_batches``): the same math."""
    def step():
        opt_d.zero_grad(set_to_none=True)
        with amp():
            fake = g(z)
            if one_pass:
                with separate_batches(d, 2):
                    real_logits, fake_logits = d(torch.cat([real, fake.detach()])).chunk(2)
            else:
                real_logits, fake_logits = d(real), d(fake.detach())
        loss_d = F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        with amp():
            logits = d(fake)
        loss_g = F.softplus(-logits.float()).mean()
        loss_g.backward()
        opt_g.step()
        return loss_g.detach()

    return step


def wgan_gp_step(g, d, opt_g, opt_d, real, zs, amp, impl):
    """One WGAN-GP iteration: N_CRITIC critic steps (loss + GP on interpolates), then one G step.
    ``impl`` "eager" uses the usual PyTorch penalty, anything else fastgan's."""
    def step():
        for i in range(N_CRITIC):
            opt_d.zero_grad(set_to_none=True)
            with amp():
                with torch.no_grad():
                    fake = g(zs[i])
                loss = d(fake).float().mean() - d(real).float().mean()
                if impl == "eager":
                    gp = eager_wgan_gp(d, real, fake)
                else:
                    gp = gradient_penalty(d, real, fake, "wgan-gp", weight=GP_WEIGHT, impl=impl)
            (loss + gp).backward()
            opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        with amp():
            loss_g = -d(g(zs[N_CRITIC])).float().mean()
        loss_g.backward()
        opt_g.step()
        return loss_g.detach()

    return step


def _dcgan_case(bench, compile_module, device, smoke, impl, label, shape, dtype, minibatch, graph=False,
                channels_last=False, one_pass=False):
    if smoke and impl == "triton" and (minibatch != "none" or one_pass):
        pytest.skip("CPU smoke: the Triton interpreter runs the plain DCGAN step only "
                    "(the minibatch step takes ~8 s interpreted)")
    g, d, nz = _models(impl, shape, device, smoke, minibatch=minibatch, channels_last=channels_last)
    op = "dcgan_ns_step" if minibatch == "none" else "dcgan_mbd_step"
    if impl == "compile":
        key = (op, label, str(dtype))
        g, d = compile_module(g, key + ("G",)), compile_module(d, key + ("D",))
    opt_g, opt_d = _adam(g, graph=graph), _adam(d, graph=graph)
    batch = shape[0]
    real = _real_batch(shape, device, channels_last)
    z = torch.randn(batch, nz, device=device)
    amp = _autocast(device, dtype, graph)

    step = dcgan_step(g, d, opt_g, opt_d, real, z, amp, one_pass)

    what = "minibatch discrimination (32x8) in D, " if minibatch != "none" else ""
    targets = _targets(impl, label, smoke, graph) if minibatch == "none" else None
    variant = ("dcgan64" if not smoke else "smoke") + ("-mbd" if minibatch != "none" else "")
    eager_variant = None
    if one_pass:  # compared with the eager step a user writes, two D passes (eager has no one-pass twin)
        eager_variant, variant = variant, variant + "-onepass"
        targets = {("vs_eager_plain" if k == "vs_eager" else k): v for k, v in targets.items()} if targets else None
        what += "one D pass over real and fake with per-half batch statistics, "
    _measure_step(bench, step, (opt_g, opt_d), graph, smoke, batch, op=op, case="forward_backward", shape=shape,
                  dtype=dtype, impl=impl, targets=targets, channels_last=channels_last, variant=variant,
                  eager_variant=eager_variant,
                  what=f"{what}D step (real + detached fake, non-saturating) + G step, Adam")


def test_dcgan_ns_step(bench, compile_module, device, smoke, impl, label, shape, dtype):
    _dcgan_case(bench, compile_module, device, smoke, impl, label, shape, dtype, "none")


def test_dcgan_minibatch_discrimination_step(bench, compile_module, device, smoke, impl, label, shape, dtype):
    _dcgan_case(bench, compile_module, device, smoke, impl, label, shape, dtype, "discrimination")


@pytest.mark.impls("fastgan")
def test_dcgan_ns_step_one_pass(bench, compile_module, device, smoke, impl, label, shape, dtype):
    """The DCGAN iteration with the D step's two passes as one over ``cat([real, fake])`` inside
    ``fastgan.nn.separate_batches(d, 2)`` (each half normalised with its own statistics: the two
    passes' math), against the eager step with two passes."""
    _dcgan_case(bench, compile_module, device, smoke, impl, label, shape, dtype, "none", one_pass=True)


@pytest.mark.impls("fastgan")
def test_dcgan_ns_step_one_pass_cuda_graph(bench, compile_module, device, smoke, impl, label, shape, dtype):
    """The one-pass DCGAN iteration captured whole in a CUDA graph, against the uncaptured eager step."""
    _skip_graph_case(smoke, impl, shape)
    _dcgan_case(bench, compile_module, device, smoke, impl, label, shape, dtype, "none", graph=True, one_pass=True)


@pytest.mark.impls("fastgan", "eager")
def test_dcgan_ns_step_channels_last(bench, compile_module, device, smoke, impl, label, shape, dtype):
    """The DCGAN iteration with channels-last weights and images in both models (cuDNN's tensor-core
    convolutions work in NHWC: in NCHW they add layout transposes around each convolution)."""
    _skip_channels_last_case(smoke, impl, label)
    _dcgan_case(bench, compile_module, device, smoke, impl, label, shape, dtype, "none", channels_last=True)


@pytest.mark.impls("fastgan", "eager")
def test_dcgan_ns_step_cuda_graph(bench, compile_module, device, smoke, impl, label, shape, dtype):
    """The DCGAN iteration captured whole in a CUDA graph: fastgan vs the same capture of plain PyTorch."""
    _skip_graph_case(smoke, impl, shape)
    _dcgan_case(bench, compile_module, device, smoke, impl, label, shape, dtype, "none", graph=True)


def eager_wgan_gp(critic, real, fake, weight=GP_WEIGHT):
    """The usual PyTorch formulation (the baseline)."""
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    x = (eps * real + (1 - eps) * fake.to(real.dtype)).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).float().sum(), x, create_graph=True)
    return weight * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def _wgan_gp_case(bench, device, smoke, impl, label, shape, dtype, graph=False, channels_last=False):
    if smoke and impl == "triton":
        pytest.skip("CPU smoke: the Triton interpreter runs the plain DCGAN step only "
                    "(n_critic double-backward steps take ~45 s interpreted)")
    g, d, nz = _models(impl, shape, device, smoke, d_norm="layer", channels_last=channels_last)
    opt_g, opt_d = _adam(g, (0.5, 0.9), graph), _adam(d, (0.5, 0.9), graph)
    batch = shape[0]
    real = _real_batch(shape, device, channels_last)
    zs = torch.randn(N_CRITIC + 1, batch, nz, device=device)
    amp = _autocast(device, dtype, graph)

    step = wgan_gp_step(g, d, opt_g, opt_d, real, zs, amp, impl)

    _measure_step(bench, step, (opt_g, opt_d), graph, smoke, batch, op="wgan_gp_train_step",
                  case="double_backward", shape=shape, dtype=dtype, impl=impl,
                  targets=_targets(impl, label, smoke, graph) if not graph else None,
                  channels_last=channels_last,
                  variant="dcgan64-layer" if not smoke else "smoke-layer",
                  what=f"n_critic={N_CRITIC} critic steps (WGAN loss + GP 10, LayerNorm critic) + 1 G step, Adam")


@pytest.mark.impls("fastgan", "eager")
def test_wgan_gp_step(bench, device, smoke, impl, label, shape, dtype):
    _wgan_gp_case(bench, device, smoke, impl, label, shape, dtype)


@pytest.mark.impls("fastgan", "eager")
def test_wgan_gp_step_channels_last(bench, device, smoke, impl, label, shape, dtype):
    """The WGAN-GP iteration with channels-last weights and images in both models."""
    _skip_channels_last_case(smoke, impl, label)
    _wgan_gp_case(bench, device, smoke, impl, label, shape, dtype, channels_last=True)


@pytest.mark.impls("fastgan", "eager")
def test_wgan_gp_step_cuda_graph(bench, device, smoke, impl, label, shape, dtype):
    """The WGAN-GP iteration (double backward included) captured whole in a CUDA graph."""
    _skip_graph_case(smoke, impl, shape)
    _wgan_gp_case(bench, device, smoke, impl, label, shape, dtype, graph=True)
