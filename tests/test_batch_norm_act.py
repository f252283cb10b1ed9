"""fastgan.ops.batch_norm_act: ref vs PyTorch, fast backends vs ref, to second order."""
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from fastgan import reference
from fastgan.ops import batch_norm_act

from _tolerances import assert_close
from conftest import all_backend_params

ACTS = [("leaky_relu", 0.2), ("relu", 0.0), ("identity", 0.0)]


def torch_composition(x, rm, rv, w, b, training, momentum, eps, activation, slope):
    y = F.batch_norm(x, rm, rv, w, b, training, momentum, eps)
    if activation == "relu":
        return F.relu(y)
    if activation == "leaky_relu":
        return F.leaky_relu(y, slope)
    return y


def make_inputs(shape, dtype, device="cpu", channels_last=False, affine=True):
    c = shape[1]
    x = (torch.randn(shape, dtype=torch.float32) * 1.7 + 0.3).to(device=device, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    wdtype = torch.float64 if dtype == torch.float64 else torch.float32
    w = (torch.rand(c, dtype=wdtype, device=device) + 0.5) if affine else None
    b = torch.randn(c, dtype=wdtype, device=device) * 0.5 if affine else None
    rm = torch.randn(c, dtype=wdtype, device=device) * 0.1
    rv = torch.rand(c, dtype=wdtype, device=device) + 0.5
    return x, w, b, rm, rv


def run_to_second_order(impl, x, w, b, rm, rv, training, activation, slope, momentum=0.1, eps=1e-5):
    """Output, running stats, first and second derivatives for one backend."""
    x = x.detach().clone().requires_grad_()
    params = [t.detach().clone().requires_grad_() if t is not None else None for t in (w, b)]
    rm, rv = rm.clone(), rv.clone()
    y = batch_norm_act(x, rm, rv, params[0], params[1], training, momentum, eps, activation, slope, impl=impl)
    g_out = torch.linspace(-1, 1, y.numel(), dtype=torch.float32).reshape(y.shape).to(y)
    inputs = [x] + [p for p in params if p is not None]
    grads = torch.autograd.grad(y, inputs, g_out, create_graph=True)
    # A gradient-penalty-like scalar: depends on dx (and dw, db) non-linearly.
    penalty = (grads[0].float() ** 2).sum() + sum((g.float() ** 2).sum() * 0.5 for g in grads[1:])
    second = torch.autograd.grad(penalty, inputs, allow_unused=True)
    return y.detach(), (rm, rv), [g.detach() for g in grads], second


# ----------------------------------------------------------------------------- ref vs PyTorch


@pytest.mark.parametrize("shape", [(4, 3, 5, 7), (6, 5), (3, 4, 11), (2, 3, 2, 3, 2)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("activation,slope", ACTS)
def test_ref_matches_torch_composition(shape, training, activation, slope):
    x, w, b, rm, rv = make_inputs(shape, torch.float32)
    rm2, rv2 = rm.clone(), rv.clone()
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    y1 = reference.batch_norm_act(x1, rm, rv, w, b, training, 0.1, 1e-5, activation, slope)
    y2 = torch_composition(x2, rm2, rv2, w, b, training, 0.1, 1e-5, activation, slope)
    assert_close(y1, y2, name="y")
    assert_close(rm, rm2, name="running_mean")
    assert_close(rv, rv2, name="running_var")
    g = torch.randn_like(y1)
    assert_close(torch.autograd.grad(y1, x1, g)[0], torch.autograd.grad(y2, x2, g)[0], name="dx")


def test_ref_double_backward_matches_torch():
    x, w, b, rm, rv = make_inputs((5, 3, 4, 4), torch.float64)
    outs = []
    for fn in (reference.batch_norm_act, torch_composition):
        xi = x.clone().requires_grad_()
        wi = w.clone().requires_grad_()
        y = fn(xi, None, None, wi, b, True, 0.1, 1e-5, "leaky_relu", 0.2)
        (dx,) = torch.autograd.grad((y * y.detach().sin()).sum(), xi, create_graph=True)
        outs.append(torch.autograd.grad((dx ** 2).sum(), [xi, wi]))
    for a, e in zip(*outs):
        assert_close(a, e)


@pytest.mark.parametrize("training", [True, False])
def test_ref_gradcheck_gradgradcheck(training):
    x, w, b, rm, rv = make_inputs((3, 2, 3, 2), torch.float64)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()

    def fn(x, w, b):
        return reference.batch_norm_act(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5, "leaky_relu", 0.2)

    assert gradcheck(fn, (x, w, b))
    assert gradgradcheck(fn, (x, w, b))


# ----------------------------------------------------------------------------- fast backends vs ref

SHAPES = [((5, 3, 7, 5), False), ((4, 6, 3, 3), True), ((7, 5), False), ((3, 4, 13), False)]


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("shape,channels_last", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("training", [True, False])
def test_fast_matches_ref(impl, device, shape, channels_last, dtype, training):
    activation, slope = ACTS[0] if shape[1] % 2 else ACTS[1]
    x, w, b, rm, rv = make_inputs(shape, dtype, device, channels_last)
    fast = run_to_second_order(impl, x, w, b, rm, rv, training, activation, slope)
    ref = run_to_second_order("ref", x, w, b, rm, rv, training, activation, slope)
    # Half-precision first/second derivatives are sums over the channel: scale the tolerance.
    scale = 1.0 if dtype == torch.float32 else 2.0
    assert fast[0].dtype == dtype and fast[0].stride() == ref[0].stride()
    assert_close(fast[0], ref[0], dtype, name="y")
    assert_close(fast[1][0], ref[1][0], torch.float32, name="running_mean")
    assert_close(fast[1][1], ref[1][1], torch.float32, name="running_var")
    for i, (a, e) in enumerate(zip(fast[2], ref[2])):
        assert_close(a, e, dtype, scale=scale, name=f"grad[{i}]")
    for i, (a, e) in enumerate(zip(fast[3], ref[3])):
        assert (a is None) == (e is None) or (a is None and e.abs().max() == 0) or (e is None and a.abs().max() == 0)
        if a is not None and e is not None:
            assert_close(a, e, dtype, scale=scale * 4, name=f"second[{i}]")


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("activation,slope", ACTS)
def test_fast_affine_false_and_no_running_stats(impl, device, activation, slope):
    x, _, _, _, _ = make_inputs((4, 3, 5, 3), torch.float32, device, affine=False)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    ys = [batch_norm_act(xi, None, None, None, None, True, 0.1, 1e-5, activation, slope, impl=i)
          for xi, i in zip(xs, (impl, "ref"))]
    assert_close(ys[0], ys[1], name="y")
    g = torch.randn_like(ys[0])
    dxs = [torch.autograd.grad(y, xi, g, create_graph=True)[0] for y, xi in zip(ys, xs)]
    assert_close(dxs[0], dxs[1], name="dx")
    ggs = [torch.autograd.grad((dx ** 2).sum(), xi)[0] for dx, xi in zip(dxs, xs)]
    assert_close(ggs[0], ggs[1], scale=4, name="ddx")


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("training", [True, False])
def test_fast_gradcheck_gradgradcheck_float64(impl, device, training):
    """The fast Functions' derivatives are checked numerically (float64 kernels).

    fast_mode (random projections) keeps the interpreter run short."""
    x, w, b, rm, rv = make_inputs((3, 2, 3, 2), torch.float64, device)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()

    def fn(x, w, b):
        return batch_norm_act(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5, "leaky_relu", 0.2, impl=impl)

    assert gradcheck(fn, (x, w, b), fast_mode=True)
    assert gradgradcheck(fn, (x, w, b), fast_mode=True)


@pytest.mark.parametrize("impl,device", all_backend_params())
def test_third_order_raises(impl, device):
    x, w, b, rm, rv = make_inputs((4, 2, 3, 3), torch.float64, device)
    x.requires_grad_()
    y = batch_norm_act(x, None, None, w, b, True, 0.1, 1e-5, impl=impl)
    (dx,) = torch.autograd.grad((y ** 2).sum(), x, create_graph=True)
    (ddx,) = torch.autograd.grad((dx ** 2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(ddx.sum(), x)


@pytest.mark.parametrize("impl,device", all_backend_params())
def test_fast_large_mean_variance_is_exact(impl, device):
    """A large offset must not destroy the variance (no E[x^2] - E[x]^2).

    x = 1000 + 0.01 * noise in float32: E[x^2] - E[x]^2 gives a negative
    variance here.  The truth is the float64 computation on the same float32
    values; any float32 mean carries ~1e-4 absolute error at 1000, i.e. ~1e-2
    of a standard deviation, hence the tolerance (the float32 ref is no better).
    """
    x = torch.randn(8, 2, 9, 9, device=device) * 0.01 + 1000.0
    truth = reference.batch_norm_act(x.double(), None, None, None, None, True, 0.1, 1e-5, "identity")
    naive_var = (x * x).mean((0, 2, 3)) - x.mean((0, 2, 3)) ** 2
    assert (naive_var - x.double().var((0, 2, 3), unbiased=False)).abs().max() > 1e-2  # the trap is real
    y = batch_norm_act(x, None, None, None, None, True, 0.1, 1e-5, "identity", impl=impl)
    assert (y.double() - truth).abs().max() < 2e-2


@pytest.mark.parametrize("impl,device", all_backend_params())
def test_fast_empty_batch_and_deterministic(impl, device):
    x = torch.randn(6, 3, 5, 5, device=device)
    a = batch_norm_act(x, None, None, None, None, True, 0.1, 1e-5, impl=impl)
    b = batch_norm_act(x, None, None, None, None, True, 0.1, 1e-5, impl=impl)
    assert torch.equal(a, b)
    empty = torch.randn(0, 3, 4, 4, device=device)
    assert batch_norm_act(empty, None, None, None, None, True, 0.1, 1e-5, impl=impl).shape == empty.shape


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs,exc,needle", [
    (dict(x=torch.randn(4)), ValueError, "x must have"),
    (dict(x=torch.randint(0, 3, (4, 3, 2, 2))), TypeError, "x must be a floating"),
    (dict(weight=torch.ones(5)), ValueError, "weight must have 3"),
    (dict(running_mean=torch.zeros(3)), ValueError, "together"),
    (dict(x=torch.randn(1, 3)), ValueError, "more than 1 value per channel"),
    (dict(activation="gelu"), ValueError, "activation must be one of"),
    (dict(eps=0.0), ValueError, "eps must be > 0"),
    (dict(impl="fast"), ValueError, "impl must be one of"),
    (dict(training=False), ValueError, "required when training=False"),
])
def test_bad_input_errors(kwargs, exc, needle):
    args = dict(x=torch.randn(4, 3, 2, 2), running_mean=None, running_var=None, weight=None, bias=None,
                training=True, momentum=0.1, eps=1e-5, activation="leaky_relu", impl="ref")
    args.update(kwargs)
    with pytest.raises(exc, match=needle):
        batch_norm_act(**args)


def test_explicit_cuda_on_cpu_raises_clearly():
    from fastgan import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match="needs CUDA tensors"):
        batch_norm_act(torch.randn(4, 3, 2, 2), impl="cuda")


def test_devices_must_match():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU to have two devices")
    with pytest.raises(ValueError, match="weight is on"):
        batch_norm_act(torch.randn(4, 3, 2, 2, device="cuda"), weight=torch.ones(3))


# ----------------------------------------------------------------------------- GPU only: compile and CUDA graphs

GPU_IMPLS = [pytest.param(i, marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                           reason="needs a CUDA GPU")])
             for i in ("triton", "cuda")]


@pytest.mark.parametrize("impl", [p for p in GPU_IMPLS if p.values[0] == "cuda"])
def test_torch_compile_fullgraph_forward_backward(impl):
    """torch.compile(fullgraph=True) traces the fused op without graph breaks (the CUDA backend: the
    Triton one is not used under torch.compile, see tests/test_torch_compile.py)."""
    torch._dynamo.reset()
    x = torch.randn(8, 4, 6, 6, device="cuda", requires_grad=True)
    w = torch.rand(4, device="cuda", requires_grad=True)
    b = torch.randn(4, device="cuda", requires_grad=True)

    def step(x, w, b):
        return batch_norm_act(x, None, None, w, b, True, 0.1, 1e-5, impl=impl).square().sum()

    compiled = torch.compile(step, fullgraph=True)
    got = torch.autograd.grad(compiled(x, w, b), [x, w, b])
    expected = torch.autograd.grad(step(x, w, b), [x, w, b])
    for a, e in zip(got, expected):
        assert_close(a, e)


@pytest.mark.parametrize("impl", GPU_IMPLS)
def test_cuda_graph_capture_and_replay(impl):
    """Forward + backward are capturable (no host syncs, no data-dependent allocation)."""
    x = torch.randn(8, 4, 6, 6, device="cuda", requires_grad=True)
    w = torch.rand(4, device="cuda", requires_grad=True)
    rm, rv = torch.zeros(4, device="cuda"), torch.ones(4, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up (compiles Triton kernels) outside the capture
        for _ in range(2):
            batch_norm_act(x, rm, rv, w, None, True, 0.1, 1e-5, impl=impl).sum().backward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    x.grad = w.grad = None
    with torch.cuda.graph(graph):
        y = batch_norm_act(x, rm, rv, w, None, True, 0.1, 1e-5, impl=impl)
        y.sum().backward()
    with torch.no_grad():
        x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    expected = batch_norm_act(x.detach(), None, None, w.detach(), None, True, 0.1, 1e-5, impl="ref")
    assert_close(y, expected)


@pytest.mark.parametrize("impl,device", [p for p in all_backend_params() if p.values[0] == "triton"])
def test_triton_slope_tensor_made_once_and_exact(impl, device):
    """The activation slope reaches the Triton kernels as a 1-element tensor (float64 needs it exact),
    made once per (value, dtype, device) rather than by a fill launch per kernel call."""
    from fastgan.kernels.batch_norm_act import _slope_tensor

    like64 = torch.zeros(3, dtype=torch.float64, device=device)
    first = _slope_tensor(0.137, like64)
    assert _slope_tensor(0.137, like64) is first
    assert first.dtype == torch.float64 and first.item() == 0.137  # exact in float64
    assert _slope_tensor(0.137, like64.float()) is not first
    assert _slope_tensor(0.25, like64) is not first and _slope_tensor(0.25, like64).item() == 0.25


@pytest.mark.parametrize("impl", GPU_IMPLS)
def test_cuda_graph_capture_with_a_slope_first_seen_in_the_capture(impl):
    """A slope the Triton kernels have not seen is made inside the graph (no synchronous copy there)
    and is right when the graph replays."""
    x = torch.randn(8, 4, 6, 6, device="cuda")
    slope = 0.0789  # used nowhere else in the tests: not cached before the capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # compile the kernels outside the capture, with another slope
        batch_norm_act(x, negative_slope=0.2, impl=impl)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = batch_norm_act(x, negative_slope=slope, impl=impl)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert_close(y, batch_norm_act(x, negative_slope=slope, impl="ref"))


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("mode", ["backward", "double"])
def test_pointwise_kernels_refuse_a_coefficient_table_unlike_scale(impl, device, mode):
    """Each coefficient table is read at scale's offsets, so a smaller one would be read past its end: the
    kernels' entry points (Triton and CUDA alike) raise instead, naming it."""
    from fastgan import _backend

    k = _backend.kernels(impl, "batch_norm_act")
    x = torch.randn(4, 6, 3, 3, device=device)
    v = torch.rand(6, device=device) + 0.5
    short = torch.rand(5, device=device)
    if mode == "backward":
        with pytest.raises(ValueError, match=r"k2 must have shape \(6,\) like scale"):
            k.norm_act_backward_apply(x, x, v, v, v, v, v, short, v, 2, 0.2)
        assert torch.isfinite(k.norm_act_backward_apply(x, x, v, v, v, v, v, v, v, 2, 0.2)).all()
    else:
        with pytest.raises(ValueError, match=r"b3 must have shape \(6,\) like scale"):
            k.norm_act_double_apply(x, x, x, v, v, v, v, v, v, v, v, v, short, v, 2, 0.2)
        assert all(torch.isfinite(t).all() for t in k.norm_act_double_apply(x, x, x, v, v, v, v, v, v, v, v, v, v, v,
                                                                             2, 0.2))
