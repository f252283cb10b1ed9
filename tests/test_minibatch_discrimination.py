"""fastgan.ops.minibatch_discrimination: ref vs the formula, fast backends and the
CPU lean path vs ref to second order, memory, modules, errors."""
import importlib
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import fastgan
from fastgan import BackendUnavailableError, reference
from fastgan.nn.minibatch import MinibatchDiscrimination, MinibatchStdDev
from fastgan.ops import minibatch_discrimination
from fastgan.ops.minibatch_discrimination import _signed_pair_sum, _signed_pair_sum_loop

from _tolerances import assert_close
from conftest import all_backend_params

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# N = 1, and odd N not a multiple of the (interpreter) block of 16.
SHAPES = [(1, 2, 3), (5, 3, 4), (9, 2, 3)]
# Three interpreter tiles of 16 in i and in j, the last ones partial (float32 only: the interpreter is slow).
MULTI_TILE = (40, 1, 3)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def naive_loop(m: torch.Tensor, exclude_self: bool) -> torch.Tensor:
    """The paper's formula, one pair at a time, in float64."""
    m = m.double()
    n, b, c = m.shape
    o = torch.zeros(n, b, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            if exclude_self and i == j:
                continue
            for k in range(b):
                o[i, k] += math.exp(-sum(abs(m[i, k, d].item() - m[j, k, d].item()) for d in range(c)))
    return o


def make_m(shape, dtype, device="cpu", scale=0.7):
    return (torch.randn(shape, dtype=torch.float32) * scale).to(device=device, dtype=dtype)


def run_to_second_order(fn, m, exclude_self):
    """o, dM = grad(o, m, g), and the second derivatives grad(dM, (m, g), u).

    g and u are fixed (not derived from each backend's own rounded dM), so
    low-precision results are compared on identical inputs at every order."""
    m = m.detach().clone().requires_grad_()
    o = fn(m, exclude_self)
    gen = torch.Generator().manual_seed(7)
    g = torch.randn(o.shape, generator=gen).to(o).requires_grad_()
    u = torch.randn(m.shape, generator=gen).to(m)
    (dm,) = torch.autograd.grad(o, m, g, create_graph=True)
    gm, gg = torch.autograd.grad(dm, (m, g), u)
    return o.detach(), dm.detach(), gm, gg


def ref_fn(m, exclude_self):
    return reference.minibatch_discrimination(m, exclude_self)


def impl_fn(impl):
    return lambda m, exclude_self: minibatch_discrimination(m, exclude_self, impl=impl)


def compare_to_ref(fn, m, exclude_self, dtype, scale=1.0):
    got = run_to_second_order(fn, m, exclude_self)
    want = run_to_second_order(ref_fn, m, exclude_self)
    for name, a, e in zip(("o", "dM", "d2/dM", "d2/dg"), got, want):
        assert a.dtype == e.dtype, name
        assert a.shape == e.shape, name
        assert_close(a, e, dtype, scale=scale, name=name)


# ----------------------------------------------------------------------------- ref vs the formula


@pytest.mark.parametrize("shape", SHAPES[:3] + [(6, 1, 1), (4, 3, 7)])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_ref_matches_naive_loop(shape, exclude_self):
    m = make_m(shape, torch.float64)
    assert_close(ref_fn(m, exclude_self), naive_loop(m, exclude_self), torch.float64, name="o")


def test_ref_self_term_is_one_and_low_precision_computes_in_float32():
    m = make_m((6, 2, 3), torch.float32)
    assert_close(ref_fn(m, False) - ref_fn(m, True), torch.ones(6, 2), torch.float32, name="self term")
    o16 = ref_fn(m.half(), False)
    assert o16.dtype == torch.float16
    assert_close(o16, ref_fn(m.half().float(), False), torch.float16, name="float16")


@pytest.mark.parametrize("exclude_self", [False, True])
def test_ref_gradcheck_gradgradcheck(exclude_self):
    m = make_m((4, 2, 3), torch.float64).requires_grad_()
    assert gradcheck(lambda t: ref_fn(t, exclude_self), (m,))
    assert gradgradcheck(lambda t: ref_fn(t, exclude_self), (m,))


# ----------------------------------------------------------------------------- fast backends vs ref


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fast_matches_ref(impl, device, shape, dtype):
    m = make_m(shape, dtype, device)
    compare_to_ref(impl_fn(impl), m, exclude_self=shape[0] % 2 == 1, dtype=dtype)


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("exclude_self", [False, True])
def test_fast_exclude_self_and_multiple_tiles(impl, device, exclude_self):
    m = make_m(MULTI_TILE, torch.float32, device)
    compare_to_ref(impl_fn(impl), m, exclude_self, torch.float32)


@pytest.mark.parametrize("impl,device", all_backend_params())
def test_fast_gradcheck_gradgradcheck_float64(impl, device):
    """Numerical derivatives of the fast Functions (float64 kernels; fast_mode: the
    interpreter pays per call, and exclude_self does not change any derivative)."""
    m = make_m((4, 2, 3), torch.float64, device).requires_grad_()
    fn = impl_fn(impl)
    assert gradcheck(lambda t: fn(t, True), (m,), fast_mode=True)
    assert gradgradcheck(lambda t: fn(t, True), (m,), fast_mode=True)


@pytest.mark.parametrize("impl,device", all_backend_params())
def test_fast_deterministic_and_noncontiguous(impl, device):
    base = make_m((3, 9, 2), torch.float32, device)
    m = base.permute(1, 0, 2)  # (9, 3, 2), not contiguous
    g = torch.randn(9, 3, device=device)
    runs = []
    for _ in range(2):
        mm = m.detach().clone().requires_grad_()
        o = minibatch_discrimination(mm, impl=impl)
        (dm,) = torch.autograd.grad(o, mm, g)
        runs.append((o, dm))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    compare_to_ref(impl_fn(impl), m, False, torch.float32)


@pytest.mark.parametrize("impl,device", all_backend_params())
def test_fast_empty_batch(impl, device):
    m = torch.randn(0, 3, 2, device=device, requires_grad=True)
    o = minibatch_discrimination(m, impl=impl)
    assert o.shape == (0, 3)
    o.sum().backward()
    assert m.grad.shape == m.shape


@pytest.mark.parametrize("impl", ["triton-interp", "lean"])
def test_third_order_raises(impl):
    if impl == "triton-interp" and not fastgan._backend.interpreter_usable():
        pytest.skip("needs the Triton interpreter")
    fn = impl_fn("triton" if impl == "triton-interp" else "auto")
    m = make_m((4, 2, 3), torch.float64).requires_grad_()
    o = fn(m, False)
    (d1,) = torch.autograd.grad((o ** 2).sum(), m, create_graph=True)
    (d2,) = torch.autograd.grad((d1 ** 2).sum(), m, create_graph=True)
    with pytest.raises(RuntimeError, match="first and second derivatives"):
        torch.autograd.grad(d2.sum(), m)


# ----------------------------------------------------------------------------- CPU lean path


@pytest.mark.parametrize("shape", SHAPES + [MULTI_TILE])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_lean_cpu_path_matches_ref(shape, dtype):
    m = make_m(shape, dtype)
    compare_to_ref(impl_fn("auto"), m, exclude_self=shape[0] % 2 == 0, dtype=dtype)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_lean_gradcheck_gradgradcheck(exclude_self):
    m = make_m((5, 2, 3), torch.float64).requires_grad_()
    fn = impl_fn("auto")
    assert gradcheck(lambda t: fn(t, exclude_self), (m,))
    assert gradgradcheck(lambda t: fn(t, exclude_self), (m,))


def test_signed_pair_sum_matches_loop():
    w = torch.randn(3, 7, 7, dtype=torch.float64)
    x = torch.randn(3, 7, 4, dtype=torch.float64)
    x[:, 3, 1] = x[:, 5, 1]  # a tie: sign(0) = 0 in both
    assert_close(_signed_pair_sum(w, x), _signed_pair_sum_loop(w, x), torch.float64, name="pair sums")


def test_auto_on_cpu_is_lean_and_ref_is_explicit(monkeypatch):
    """Under auto on CPU the materialising ref is not used; impl='ref' / FASTGAN_IMPL=ref use it."""
    mod = importlib.import_module("fastgan.ops.minibatch_discrimination")  # the module, not the function

    calls = []
    real = mod.reference.minibatch_discrimination

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(mod.reference, "minibatch_discrimination", spy)
    monkeypatch.delenv("FASTGAN_IMPL", raising=False)
    m = make_m((5, 2, 3), torch.float32)
    minibatch_discrimination(m)
    assert calls == []
    minibatch_discrimination(m, impl="ref")
    assert calls == [1]
    monkeypatch.setenv("FASTGAN_IMPL", "ref")
    minibatch_discrimination(m)
    assert calls == [1, 1]


# ----------------------------------------------------------------------------- memory

MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys, torch
    from fastgan.ops import minibatch_discrimination as mbd

    def peak_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def fwd_bwd(m, impl):
        m = m.clone().requires_grad_()
        o = mbd(m, impl=impl)
        (dm,) = torch.autograd.grad(o.sum(), m)
        return dm

    out = {}
    torch.manual_seed(0)
    small = torch.randn(70, 2, 3)
    fwd_bwd(small, "auto")  # warm up both paths (imports, thread pools)
    if "triton" in sys.argv:
        fwd_bwd(small, "triton")
        m = torch.randn(1024, 1, 8)  # naive pair tensor: 1024^2 * 8 * 4 B = 32 MiB
        before = peak_mib()
        fwd_bwd(m, "triton")
        out["triton"] = peak_mib() - before
    m = torch.randn(1024, 8, 32)  # naive pair tensor: 1024^2 * 8 * 32 * 4 B = 1 GiB
    before = peak_mib()
    fwd_bwd(m, "auto")
    out["lean"] = peak_mib() - before
    print(json.dumps(out))
""")


def test_peak_memory_never_builds_the_pair_tensor():
    """Peak RSS of a fresh process: the Triton kernels (interpreter) stay O(N*B*C), the
    CPU lean path O(N^2*B); the N^2*B*C tensor of the naive layer would not fit either budget."""
    args = [sys.executable, "-c", MEMORY_SCRIPT]
    if fastgan._backend.interpreter_usable() and not torch.cuda.is_available():
        args.append("triton")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("FASTGAN_IMPL", None)
    res = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    peaks = json.loads(res.stdout.strip().splitlines()[-1])
    if "triton" in peaks:
        assert peaks["triton"] < 8, peaks  # MiB; the pair tensor alone is 32 MiB
    assert peaks["lean"] < 256, peaks  # MiB; E and one (B, N, N) temporary are 32 MiB each; the pair tensor 1 GiB


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("impl", ["triton", "cuda"])
def test_cuda_peak_memory_is_linear(impl):
    if impl == "cuda" and fastgan._backend.cuda_reason_unusable(torch.device("cuda")):
        pytest.skip("fastgan._C unavailable")
    m = torch.randn(4096, 8, 8, device="cuda", requires_grad=True)  # pair tensor: 4 GiB
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    o = minibatch_discrimination(m, impl=impl)
    (dm,) = torch.autograd.grad(o, m, torch.ones_like(o), create_graph=True)
    torch.autograd.grad((dm ** 2).sum(), m)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - before < 64 * m.numel() * 4


# ----------------------------------------------------------------------------- modules


@pytest.mark.parametrize("exclude_self,mean", [(False, False), (True, False), (False, True), (True, True)])
def test_minibatch_discrimination_module(exclude_self, mean):
    layer = MinibatchDiscrimination(10, 6, 3, exclude_self=exclude_self, mean=mean)
    assert layer.T.shape == (10, 6, 3)
    assert abs(layer.T.detach().std().item() - 0.05) < 0.02  # improved-gan's Normal(0.05)
    x = torch.randn(7, 10, requires_grad=True)
    y = layer(x)
    assert y.shape == (7, 16) and layer.out_features == 16
    m = (x @ layer.T.reshape(10, -1)).reshape(7, 6, 3)
    o = ref_fn(m, exclude_self)
    if mean:
        o = o / (6 if exclude_self else 7)
    assert_close(y, torch.cat([x, o], 1), torch.float32, name="module output")
    y.sum().backward()
    assert x.grad is not None and layer.T.grad is not None


def test_minibatch_discrimination_module_flattens_and_second_order():
    layer = MinibatchDiscrimination(4, 2, 3).double()
    x = torch.randn(3, 2, 2, 1, dtype=torch.float64, requires_grad=True)
    assert layer(x).shape == (3, 6)
    assert gradgradcheck(lambda t: layer(t), (x,), fast_mode=True)


@pytest.mark.skipif(not fastgan._backend.interpreter_usable() or torch.cuda.is_available(),
                    reason="needs the Triton interpreter")
def test_minibatch_discrimination_module_triton_interp():
    layer = MinibatchDiscrimination(8, 3, 4, impl="triton")
    x = torch.randn(6, 8)
    ref_layer = MinibatchDiscrimination(8, 3, 4, impl="ref")
    ref_layer.load_state_dict(layer.state_dict())
    assert_close(layer(x), ref_layer(x), torch.float32, name="module")


def minibatch_stddev_formula(x, group_size, num_channels, eps=1e-8):
    """Per sample k: its group {j : j = k mod N/G}, std over the group, averaged per channel group."""
    x = x.double()
    n, c = x.shape[:2]
    g = n if group_size is None else min(group_size, n)
    groups = n // g
    cf = c // num_channels
    extra = torch.empty((n, num_channels) + tuple(x.shape[2:]), dtype=torch.float64)
    for k in range(n):
        members = x[[j for j in range(n) if j % groups == k % groups]]
        std = (members.var(dim=0, unbiased=False) + eps).sqrt()
        for f in range(num_channels):
            extra[k, f] = std[f * cf:(f + 1) * cf].mean()
    return torch.cat([x, extra], 1)


@pytest.mark.parametrize("shape,group_size,num_channels", [
    ((8, 6, 3, 3), 4, 1), ((8, 6, 3, 3), 2, 2), ((6, 4), None, 1), ((3, 4, 2, 2), 4, 4), ((4, 2, 2, 2, 2), 2, 1),
])
def test_minibatch_stddev_matches_formula(shape, group_size, num_channels):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    layer = MinibatchStdDev(group_size, num_channels)
    y = layer(x)
    assert y.shape == (shape[0], shape[1] + num_channels) + shape[2:]
    assert_close(y, minibatch_stddev_formula(x.detach(), group_size, num_channels), torch.float64, name="stddev")
    assert gradgradcheck(lambda t: layer(t), (x,), fast_mode=True)


def test_minibatch_stddev_low_precision():
    x = torch.randn(4, 3, 2, 2)
    y = MinibatchStdDev()(x.bfloat16())
    assert y.dtype == torch.bfloat16
    assert_close(y, MinibatchStdDev()(x.bfloat16().float()), torch.bfloat16, name="bf16")


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs,exc,needle", [
    (dict(m=torch.randn(4, 3)), ValueError, "m must have 3 dimensions"),
    (dict(m=torch.randn(4, 3, 2, 1)), ValueError, "m must have 3 dimensions"),
    (dict(m=torch.randint(0, 3, (4, 3, 2))), TypeError, "m must be a floating"),
    (dict(m=[[[1.0]]]), TypeError, "m must be a torch.Tensor"),
    (dict(exclude_self=1), TypeError, "exclude_self must be a bool"),
    (dict(impl="fast"), ValueError, "impl must be one of"),
])
def test_bad_input_errors(kwargs, exc, needle):
    args = dict(m=torch.randn(4, 3, 2), exclude_self=False, impl="auto")
    args.update(kwargs)
    with pytest.raises(exc, match=needle):
        minibatch_discrimination(**args)


def test_explicit_cuda_on_cpu_raises_clearly():
    with pytest.raises(BackendUnavailableError, match="needs CUDA tensors"):
        minibatch_discrimination(torch.randn(4, 3, 2), impl="cuda")


@pytest.mark.parametrize("ctor,exc,needle", [
    (lambda: MinibatchDiscrimination(0, 3, 2), ValueError, "in_features must be > 0"),
    (lambda: MinibatchDiscrimination(4, 3.0, 2), TypeError, "num_kernels must be an int"),
    (lambda: MinibatchDiscrimination(4, 3, 2, exclude_self="yes"), TypeError, "exclude_self must be a bool"),
    (lambda: MinibatchStdDev(0), ValueError, "group_size must be > 0"),
    (lambda: MinibatchStdDev(4, num_channels=0), ValueError, "num_channels must be > 0"),
])
def test_module_constructor_errors(ctor, exc, needle):
    with pytest.raises(exc, match=needle):
        ctor()


def test_module_input_errors():
    with pytest.raises(ValueError, match="in_features=10"):
        MinibatchDiscrimination(10, 3, 2)(torch.randn(4, 9))
    with pytest.raises(ValueError, match="multiple of the group size"):
        MinibatchStdDev(4)(torch.randn(6, 3, 2, 2))
    with pytest.raises(ValueError, match="num_channels=2"):
        MinibatchStdDev(2, num_channels=2)(torch.randn(4, 3, 2, 2))
    with pytest.raises(TypeError, match="floating"):
        MinibatchStdDev(2)(torch.ones(4, 3, dtype=torch.long))
