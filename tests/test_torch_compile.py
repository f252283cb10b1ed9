"""torch.compile(fullgraph=True) traces every fused op on the fast backends, without graph breaks.

The first GPU run found that Dynamo could not trace the backend choice (a lock around the
extension's one-time load, ``importlib.import_module`` of the Triton kernels): a user's
``torch.compile`` of a model with fastgan layers got graph breaks, and ``fullgraph=True`` failed.
On the CPU these cases run the CUDA backend's ops as the emulator builds them
(``torch.ops.fastgan_emu``, given the library's fake kernels) through Dynamo and AOTAutograd
(``aot_eager``: the autograd Functions' backward is traced too); on a GPU they run the real
backend through Inductor.  The Triton backend is not used under torch.compile: on the GPU its
kernels, traced into Inductor's graph, gave wrong gradients (``_backend.TRITON_UNDER_COMPILE``), so
``auto`` falls back to the reference ops there and ``impl="triton"`` raises.
"""
import copy
import subprocess
import sys

import pytest
import torch

from conftest import cuda_emu_skip_reason
from _tolerances import assert_close
from fastgan import _backend
from fastgan import ops as F

CASES = [
    pytest.param("cuda", "cuda", id="cuda-cuda", marks=[
        pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]),
    pytest.param("cuda", "cpu", id="cuda-emu", marks=[
        pytest.mark.cuda_emu, pytest.mark.skipif(cuda_emu_skip_reason() is not None,
                                                 reason=cuda_emu_skip_reason() or "")]),
]


@pytest.fixture
def compile_backend(request):
    """Inductor on a GPU; on the CPU, Dynamo + AOTAutograd with the emulated ops' fakes registered."""
    if torch.cuda.is_available():
        return "inductor"
    from conftest import emulated_cuda_ops
    from fastgan.ops import _fake, _fake_minibatch, _fake_penalty, _fake_stats_affine
    from fastgan.ops._fake_registry import register_fakes

    emulated_cuda_ops()
    for module in (_fake, _fake_minibatch, _fake_penalty, _fake_stats_affine):
        register_fakes(module.FAKES, namespace="fastgan_emu")  # skips the ones already registered
    return "aot_eager"


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_backend_choice_traces_as_a_constant(device):
    """Dynamo does not trace into the choice of backend (the extension's load takes a lock) and
    traces the import of a Triton kernel module; runs without a GPU (auto on CUDA tensors goes
    through the extension's load whatever its outcome)."""
    def step(x):
        chosen = _backend.resolve("auto", torch.device(device), "op")
        modules = [_backend.kernels("triton", name) for name in ("batch_norm_act", "penalty",
                                                                 "minibatch_discrimination")]
        return x * len(chosen) + sum(len(m.__name__) for m in modules)

    torch._dynamo.reset()
    x = torch.randn(3)
    assert_close(torch.compile(step, fullgraph=True, backend="eager")(x), step(x))


def test_backend_choice_is_marked_as_dynamo_marks_it():
    """_backend marks _resolve itself (importing Dynamo for its decorator costs seconds at import):
    the mark must be the one torch._dynamo.assume_constant_result sets in this torch."""
    def probe():
        return None

    before = set(vars(probe))
    torch._dynamo.assume_constant_result(probe)
    marks = {name: vars(probe)[name] for name in set(vars(probe)) - before}
    assert marks and all(getattr(_backend._resolve, name, None) == value for name, value in marks.items()), marks


def test_import_does_not_load_dynamo():
    code = "import sys, fastgan, fastgan.nn, fastgan.ops; print('torch._dynamo' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "False"


def test_triton_backend_is_not_used_under_compile(monkeypatch):
    """Compiled, auto takes the reference ops where it would take Triton, and impl="triton" raises."""
    monkeypatch.setattr(_backend, "cuda_reason_unusable", lambda device: "no extension (test)")
    monkeypatch.setattr(_backend, "triton_reason_unusable", lambda device: None)
    monkeypatch.setattr(_backend, "_warned", set())
    cuda = torch.device("cuda")
    with pytest.warns(RuntimeWarning, match="using the Triton kernels"):
        assert _backend.resolve("auto", cuda, "op") == "triton"  # eager: Triton, as before

    def chosen(x):
        return x * len(_backend.resolve("auto", cuda, "op"))  # len("ref") == 3, len("triton") == 6

    torch._dynamo.reset()
    with pytest.warns(RuntimeWarning, match="pure-PyTorch reference"):
        out = torch.compile(chosen, fullgraph=True, backend="eager")(torch.ones(2))
    assert out.tolist() == [3.0, 3.0]

    def explicit(x):
        return x * len(_backend.resolve("triton", cuda, "op"))

    torch._dynamo.reset()
    with pytest.raises(Exception, match="Triton kernels are not used under torch.compile"):
        torch.compile(explicit, fullgraph=True, backend="eager")(torch.ones(2))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_triton_impl_under_compile_raises_on_gpu():
    x, w, b = _leaf(8, 4, 5, 3, device="cuda"), _leaf(4, device="cuda", positive=True), _leaf(4, device="cuda")
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, w, b: F.batch_norm_act(x, None, None, w, b, impl="triton"), fullgraph=True)
    with pytest.raises(Exception, match="impl='triton' is unavailable: fastgan's Triton kernels"):
        compiled(x, w, b)


def _leaf(*shape, device, positive=False):
    t = torch.rand(*shape, device=device) + 0.5 if positive else torch.randn(*shape, device=device)
    return t.requires_grad_()


def _check_compiled(fn, inputs, backend):
    """fn compiled with fullgraph=True gives fn's output and input gradients."""
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    got = compiled(*inputs)
    got_grads = torch.autograd.grad(got.square().sum(), inputs)
    expected = fn(*inputs)
    expected_grads = torch.autograd.grad(expected.square().sum(), inputs)
    assert_close(got, expected, name="output")
    for i, (g, e) in enumerate(zip(got_grads, expected_grads)):
        assert_close(g, e, name=f"grad of input {i}")


@pytest.mark.parametrize("impl,device", CASES)
def test_batch_norm_act_with_running_stats(impl, device, compile_backend):
    x, w, b = _leaf(8, 4, 5, 3, device=device), _leaf(4, device=device, positive=True), _leaf(4, device=device)
    running = {name: (torch.zeros(4, device=device), torch.ones(4, device=device)) for name in ("compiled", "eager")}

    def step(x, w, b):
        rm, rv = running[next(calls)]
        return F.batch_norm_act(x, rm, rv, w, b, True, 0.1, 1e-5, impl=impl, segments=segments)

    for segments in (1, 2):  # (2: statistics per half of the batch, running stats updated per half)
        calls = iter(("compiled", "eager"))
        _check_compiled(step, (x, w, b), compile_backend)
        for got, expected in zip(running["compiled"], running["eager"]):  # the in-place update was traced
            assert_close(got, expected, name="running stats")
        assert not torch.equal(running["compiled"][0], torch.zeros(4, device=device))


@pytest.mark.parametrize("impl,device", CASES)
def test_group_layer_instance_norm_act(impl, device, compile_backend):
    x = _leaf(4, 6, 5, 5, device=device).detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    w, b = _leaf(6, device=device, positive=True), _leaf(6, device=device)

    def step(x, w, b):
        y = F.group_norm_act(x, 3, w, b, impl=impl)
        y = F.layer_norm_act(y, w, b, impl=impl)
        return F.instance_norm_act(y, weight=w, bias=b, impl=impl)

    _check_compiled(step, (x, w, b), compile_backend)


@pytest.mark.parametrize("impl,device", CASES)
def test_pixel_shuffle_ops(impl, device, compile_backend):
    x, bias = _leaf(4, 8, 3, 5, device=device), _leaf(2, device=device)
    w, b = _leaf(2, device=device, positive=True), _leaf(2, device=device)

    def step(x, bias, w, b):
        y = F.pixel_shuffle_act(x, 2, bias, impl=impl)
        return y + F.pixel_shuffle_batch_norm_act(x, 2, None, None, w, b, True, impl=impl)

    _check_compiled(step, (x, bias, w, b), compile_backend)


@pytest.mark.parametrize("impl,device", CASES)
def test_minibatch_discrimination_and_penalty_ops(impl, device, compile_backend):
    m = _leaf(6, 4, 3, device=device)
    real, fake = _leaf(6, 3, 4, 4, device=device), _leaf(6, 3, 4, 4, device=device)
    eps = torch.rand(6, device=device)

    def step(m, real, fake):
        features = F.minibatch_discrimination(m, impl=impl)
        mixed = F.interpolate(real, fake, eps, impl=impl)
        return features.sum() * F.penalty_from_grad(mixed, impl=impl)

    _check_compiled(step, (m, real, fake), compile_backend)


@pytest.mark.parametrize("impl,device", CASES)
def test_virtual_batch_norm(impl, device, compile_backend):
    x, ref = _leaf(4, 6, 3, 3, device=device), torch.randn(5, 6, 3, 3, device=device)
    w, b = _leaf(6, device=device, positive=True), _leaf(6, device=device)

    def step(x, w, b):
        ref_mean, ref_sq_mean = F.virtual_batch_reference_stats(ref, impl=impl)
        return F.virtual_batch_norm(x, ref_mean, ref_sq_mean, 5, w, b, activation="leaky_relu", impl=impl)

    _check_compiled(step, (x, w, b), compile_backend)


def _fused_stack(impl, device):
    from fastgan import nn as fnn

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), fnn.BatchNormAct2d(8, impl=impl), fnn.GroupNormAct(2, 8, impl=impl),
        fnn.PixelShuffleUpsample(8, 4, scale=2, impl=impl)).to(device)


def _compare_steps(model, compiled, batches, device):
    twin = copy.deepcopy(model)
    for n in batches:
        x = torch.randn(n, 3, 4, 4, device=device, requires_grad=True)
        got = compiled(x)
        (got_grad,) = torch.autograd.grad(got.square().sum(), x)
        expected = twin(x)
        (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
        assert_close(got, expected, name=f"output at batch {n}")
        assert_close(got_grad, expected_grad, name=f"input grad at batch {n}")
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        assert_close(a.float(), b.float(), name=name)  # running stats updated once per call, as eager


@pytest.mark.parametrize("dynamic", [None, True], ids=["automatic-dynamic", "dynamic"])
@pytest.mark.parametrize("impl,device", CASES + [pytest.param("ref", "cpu", id="ref")])
def test_modules_compile_with_dynamic_shapes(impl, device, dynamic, compile_backend):
    """A batch size that changes recompiles with symbolic shapes (torch.compile's automatic dynamic, e.g. the
    last, smaller batch of an epoch; or dynamic=True from the start): the CUDA backend's C++ autograd read
    concrete sizes there (RuntimeError: Cannot call numel() on tensor with symbolic sizes), and the
    activation check's math.isfinite did not trace on a symbolic float (every layer, every backend)."""
    model = _fused_stack(impl, device)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=compile_backend, dynamic=dynamic)
    _compare_steps(model, compiled, (4, 6, 5), device)


@pytest.mark.parametrize("impl,device", CASES)
def test_pixel_shuffle_layer_under_inductor_layouts(impl, device, compile_backend):
    """Inductor lays a convolution's output out channels-last and may hand the pixel-shuffle backward that
    copy of x (the forward's was contiguous): the upscale ops read any layout (they refused it)."""
    model = _fused_stack(impl, device)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    _compare_steps(model, compiled, (4,), device)


@pytest.mark.parametrize("impl,device", CASES + [pytest.param("ref", "cpu", id="ref")])
def test_cumulative_average_batch_norm_compiles_once(impl, device, compile_backend):
    """momentum=None (a cumulative average): its factor 1 / num_batches_tracked as a Python float made every
    training step a recompile, until the recompile limit and then eager.  Same outputs and running stats as
    the eager layer, one compiled frame."""
    from torch._dynamo.utils import counters

    from fastgan.nn import BatchNormAct2d

    torch.manual_seed(0)
    model = BatchNormAct2d(4, momentum=None, impl=impl).to(device)
    twin = copy.deepcopy(model)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend=compile_backend)
    for _ in range(5):
        x = torch.randn(6, 4, 3, 3, device=device, requires_grad=True)
        got, expected = compiled(x), twin(x)
        assert_close(got, expected, name="output")
        assert_close(torch.autograd.grad(got.sum(), x)[0], torch.autograd.grad(expected.sum(), x)[0], name="grad")
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert_close(getattr(model, name).float(), getattr(twin, name).float(), name=name)
    assert counters["frames"]["ok"] == 1 and not counters["stats"].get("unique_graphs", 0) > 1


@pytest.mark.parametrize("impl,device", CASES)
def test_opcheck_of_the_cpp_autograd_ops(impl, device, compile_backend):
    """torch.library.opcheck on the C++ autograd ops with inputs requiring grad (schema, autograd registration,
    fake tensors, static AOT dispatch): float32 weights used to be passed on through a same-dtype .to(), an
    alias the schema test reported.  (Dynamic-shape AOT dispatch is not claimed for them: under torch.compile
    the layers take the Python Functions, test_modules_compile_with_dynamic_shapes.)"""
    from conftest import emulated_cuda_ops

    op = torch.ops.fastgan if device == "cuda" else emulated_cuda_ops()
    torch.manual_seed(0)
    x = torch.randn(3, 4, 3, 2, device=device, requires_grad=True)
    w = (torch.rand(4, device=device) + 0.5).requires_grad_()
    b = torch.randn(4, device=device).requires_grad_()
    tests = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_static")
    for per_sample, groups, running in ((False, 4, (torch.zeros(4, device=device), torch.ones(4, device=device))),
                                       (True, 2, (None, None))):
        args = (x, w, b, *running, 0.1, 1e-5, groups, per_sample, 2, 0.2)
        torch.library.opcheck(op.norm_act_stats.default, args, test_utils=tests)
