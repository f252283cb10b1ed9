"""What CUDA-graph capture forbids, checked on any machine.

A capture fails on a host synchronisation (the host reading a tensor's value:
``.item()``, ``bool(t)``, ``float(t)``, ``torch.equal``) and on an allocation
whose size depends on the data (``nonzero``, boolean-mask indexing,
``masked_select``, ``unique``).  ``test_cuda_graphs.py`` captures for real on a
GPU; this file runs the same layers, every penalty's double backward and the
training steps of the benchmarks on CPU under a dispatch mode that records
every such aten call, through each backend that runs here (``ref``, the Triton
interpreter, the CUDA ops on the emulator).  The Python around the kernels is
the same on a GPU, so a sync added to a host path fails here, in CI, instead of
in a GPU session's capture.  (It cannot see ``tensor.tolist()`` / ``.numpy()``,
which do not dispatch, nor what happens inside a kernel.)
"""
from __future__ import annotations

import traceback

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import fastgan.nn as fnn
from fastgan import _backend
from fastgan.models.dcgan import DCGANDiscriminator, DCGANGenerator, set_impl
from fastgan.penalties import gradient_penalty

from _fused_layers import fused_layers
from conftest import all_backend_params

# aten ops whose CUDA implementation waits for the GPU: a value read by the host, or an output size
# read from the data.
HOST_SYNC_OPS = {"_local_scalar_dense", "item", "is_nonzero", "equal", "allclose", "nonzero", "masked_select",
                 "unique", "_unique", "_unique2", "unique_dim", "unique_consecutive", "bincount"}


def _is_mask(t) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8)


class HostSyncRecorder(TorchDispatchMode):
    """Records (op, where) for every call that would synchronise with the GPU or size an output from data."""

    def __init__(self):
        super().__init__()
        self.syncs: list[tuple[str, str]] = []
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.calls += 1
        name = func._schema.name.split("::")[-1]
        masked_index = name in ("index", "index_put", "index_put_") and any(
            _is_mask(i) for i in (args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()))
        if name in HOST_SYNC_OPS or masked_index:
            where = [f for f in traceback.extract_stack()[:-1] if "fastgan" in f.filename or "tests" in f.filename]
            self.syncs.append((str(func), "".join(traceback.format_list(where[-4:]))))
        return func(*args, **kwargs)

    def report(self) -> str:
        return "\n".join(f"{op} at\n{where}" for op, where in self.syncs[:5])


@pytest.fixture
def fast_calls(monkeypatch):
    """Counts the kernel-table lookups per backend, so a case cannot pass by running no fast kernel."""
    counts: dict[str, int] = {}
    kernels = _backend.kernels

    def counting(backend, op):
        counts[backend] = counts.get(backend, 0) + 1
        return kernels(backend, op)

    monkeypatch.setattr(_backend, "kernels", counting)
    return counts


def _no_syncs(run, impl, fast_calls):
    recorder = HostSyncRecorder()
    with recorder:
        run()
    assert recorder.calls > 0
    assert not recorder.syncs, f"{len(recorder.syncs)} host syncs (capture would fail):\n{recorder.report()}"
    if impl != "ref":
        assert fast_calls.get(impl, 0) > 0, f"no {impl} kernels ran: {fast_calls}"


def backends():
    """ref plus every fast backend that runs here (CPU: the interpreter and the CUDA emulator)."""
    return [pytest.param("ref", "cpu", id="ref")] + all_backend_params()


def _second_order(y, inputs):
    """Backward with create_graph, then backward through it: what a gradient penalty does."""
    grads = torch.autograd.grad(y.float().square().sum(), inputs, create_graph=True)
    sum(g.float().square().sum() for g in grads).backward()


# ----------------------------------------------------------------------------- every layer


LAYERS = fused_layers() + [
    ("InstanceNormAct2d-running", lambda impl: fnn.InstanceNormAct2d(6, affine=True, track_running_stats=True,
                                                                      impl=impl), (4, 6, 3, 5))]


@pytest.mark.parametrize("impl,device", backends())
@pytest.mark.parametrize("name,factory,shape", LAYERS, ids=[n for n, _, _ in LAYERS])
def test_layer_first_and_second_order_have_no_host_sync(impl, device, name, factory, shape, fast_calls):
    torch.manual_seed(0)
    layer = factory(impl).to(device)
    x = torch.randn(shape, device=device, requires_grad=True)
    inputs = [x] + [p for p in layer.parameters() if p.requires_grad]

    def run():
        y = layer(x)
        y.float().square().sum().backward(retain_graph=True)
        _second_order(layer(x), inputs)

    if name == "MinibatchStdDev":  # no fast kernels of its own: plain PyTorch, checked all the same
        fast_calls[impl] = 1
    _no_syncs(run, impl, fast_calls)


@pytest.mark.parametrize("impl,device", backends())
def test_virtual_batch_norm_has_no_host_sync(impl, device, fast_calls):
    torch.manual_seed(0)
    layer = fnn.VirtualBatchNorm2d(6, impl=impl).to(device)
    ref_batch = torch.randn(8, 6, 3, 3, device=device)
    x = torch.randn(5, 6, 3, 3, device=device, requires_grad=True)

    def run():
        with fnn.virtual_batch_reference(layer):
            layer(ref_batch)
        _second_order(layer(x), [x, layer.weight, layer.bias])

    _no_syncs(run, impl, fast_calls)


# ----------------------------------------------------------------------------- penalties


@pytest.mark.parametrize("impl,device", backends())
@pytest.mark.parametrize("kind", ["wgan-gp", "wgan-lp", "r1", "r2", "dragan"])
def test_gradient_penalty_double_backward_has_no_host_sync(impl, device, kind, fast_calls):
    if device == "cpu" and impl == "triton" and kind not in ("wgan-gp", "dragan"):
        pytest.skip("interpreter time: the kinds differ only in penalties.py's own code, run on the other backends")
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), fnn.LayerNormAct2d(4, impl=impl),
                           nn.Conv2d(4, 4, 3, stride=2, padding=1), fnn.InstanceNormAct2d(4, affine=True, impl=impl),
                           nn.Flatten(), nn.Linear(4 * 3 * 3, 1)).to(device)
    real, fake = torch.randn(4, 3, 6, 6, device=device), torch.randn(4, 3, 6, 6, device=device)

    def run():
        gradient_penalty(critic, real, fake, kind, impl=impl).backward()

    _no_syncs(run, impl, fast_calls)


@pytest.mark.parametrize("impl,device", backends())
def test_gradient_penalty_with_a_grad_scaler_has_no_host_sync(impl, device, fast_calls):
    """The AMP recipe's path: the scale is read as a tensor, and the gradient unscaled on the device."""
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), fnn.LayerNormAct2d(4, impl=impl), nn.Flatten(),
                           nn.Linear(4 * 6 * 6, 1)).to(device)
    real, fake = torch.randn(4, 3, 6, 6, device=device), torch.randn(4, 3, 6, 6, device=device)
    scaler = torch.amp.GradScaler(torch.device(device).type)

    def run():
        scaler.scale(gradient_penalty(critic, real, fake, "wgan-gp", scaler=scaler, impl=impl)).backward()

    _no_syncs(run, impl, fast_calls)


# ----------------------------------------------------------------------------- whole training steps


def _models(impl, device, d_norm, minibatch="none"):
    torch.manual_seed(0)
    g = set_impl(DCGANGenerator(16, 8, 4, norm="batch", fused=True), impl).to(device)
    d = set_impl(DCGANDiscriminator(16, 4, norm=d_norm, fused=True, minibatch=minibatch,
                                    minibatch_kernels=5, minibatch_kernel_dim=3), impl).to(device)
    return g, d


@pytest.mark.parametrize("impl,device", backends())
@pytest.mark.parametrize("minibatch", ["none", "discrimination"])
def test_dcgan_iteration_has_no_host_sync(impl, device, minibatch, fast_calls):
    """The forward and backward passes of the benchmarks' DCGAN iteration (the optimiser aside: a
    capturable Adam is PyTorch's business, and needs CUDA tensors)."""
    g, d = _models(impl, device, "batch", minibatch)
    real, z = torch.randn(4, 3, 16, 16, device=device), torch.randn(4, 8, device=device)

    def run():
        fake = g(z)
        (F.softplus(-d(real)).mean() + F.softplus(d(fake.detach())).mean()).backward()
        F.softplus(-d(fake)).mean().backward()

    _no_syncs(run, impl, fast_calls)


@pytest.mark.parametrize("impl,device", backends())
def test_wgan_gp_critic_step_has_no_host_sync(impl, device, fast_calls):
    g, d = _models(impl, device, "layer")
    real, z = torch.randn(4, 3, 16, 16, device=device), torch.randn(4, 8, device=device)

    def run():
        with torch.no_grad():
            fake = g(z)
        loss = d(fake).mean() - d(real).mean()
        (loss + gradient_penalty(d, real, fake, "wgan-gp", weight=10.0, impl=impl)).backward()
        (-d(g(z)).mean()).backward()

    _no_syncs(run, impl, fast_calls)


# ----------------------------------------------------------------------------- the recorder itself


def test_recorder_catches_what_capture_refuses():
    """The check can fail: each kind of forbidden call is recorded."""
    x = torch.randn(5)
    for bad in (lambda: x.sum().item(), lambda: bool(x[0] > 0), lambda: x[x > 0], lambda: torch.nonzero(x),
                lambda: torch.unique(x), lambda: torch.equal(x, x), lambda: float(x.max())):
        recorder = HostSyncRecorder()
        with recorder:
            bad()
        assert len(recorder.syncs) == 1, recorder.syncs
    recorder = HostSyncRecorder()
    with recorder:
        (x * 2).exp().sum().sqrt()
        x[torch.tensor([0, 2])]  # integer indices: fine
    assert recorder.calls >= 5 and not recorder.syncs
