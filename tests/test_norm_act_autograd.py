"""The C++ autograd of the CUDA backend's fused norm layers (``torch.ops.fastgan.norm_act``,
``csrc/norm_act_autograd.cpp``) against the Python Functions it replaces (``fastgan/ops/_norm_act.py``).

Both drive the same kernels with the same statistics, so they must agree bit for bit -- forward,
backward and double backward -- for every optional-argument combination (the C++ side indexes its
gradient edges by the tensors given).  Runs on a GPU and on the CPU emulator of ``csrc/``; the
ops' own accuracy against the reference is tested per op (test_batch_norm_act.py and others)."""
import pytest
import torch

from fastgan.ops import _norm_act, batch_norm_act, layer_norm_act, pixel_shuffle_act, pixel_shuffle_batch_norm_act
from fastgan.ops._autograd import THIRD_ORDER_MESSAGE

from conftest import all_backend_params

CUDA = [p for p in all_backend_params() if p.values[0] == "cuda"]

# (weight, bias): None, a parameter, or a tensor that needs no gradient
PARAMS = [("none", "none"), ("param", "none"), ("none", "param"), ("param", "param"), ("fixed", "param"),
          ("param", "fixed")]


def _param(kind, channels, device, offset):
    if kind == "none":
        return None
    t = torch.rand(channels, device=device, dtype=torch.float64) + offset
    return t.requires_grad_(kind == "param")


def _python_functions(monkeypatch):
    monkeypatch.setattr(_norm_act, "cpp_autograd_fits", lambda *args: False)


def _first_and_second(op, x, weight, bias):
    """y, then the gradients of a penalty-like loss: first derivatives with create_graph, and the
    gradients of their squared norm (second derivatives), wrt every input needing one."""
    inputs = [t for t in (x, weight, bias) if t is not None and t.requires_grad]
    y = op(x, weight, bias)
    gy = torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).view_as(y)
    first = torch.autograd.grad(y, inputs, gy, create_graph=True)
    penalty = sum((g ** 2).sum() for g in first)
    second = torch.autograd.grad(penalty, inputs, allow_unused=True)
    plain = torch.autograd.grad(op(x, weight, bias), inputs, gy)  # no graph: the other code path
    return [y, *first, *plain, *(torch.zeros(()) if s is None else s for s in second)]


def _assert_same_bits(a, b):
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b)):
        assert torch.equal(u.detach(), v.detach()), f"result {i} differs"


def _assert_cpp_matches_python_functions(fn, x, w, b, monkeypatch):
    """fn's C++ path (one fastgan node directly on x, w, b) and its Python Functions path give the same
    bits, first and second order."""
    y = fn(x, w, b)
    assert y.grad_fn.name() == "fastgan::NormActBackward"
    assert {type(f).__name__ for f, _ in y.grad_fn.next_functions if f is not None} == {"AccumulateGrad"}
    cpp = _first_and_second(fn, x, w, b)
    _python_functions(monkeypatch)
    assert type(fn(x, w, b).grad_fn).__name__ == "NormActFnBackward"
    _assert_same_bits(cpp, _first_and_second(fn, x, w, b))


def _batch_norm(x, w, b):
    return batch_norm_act(x, None, None, w, b, True, 0.1, 1e-5, "leaky_relu", 0.2, impl="cuda")


@pytest.mark.parametrize("impl,device", CUDA)
@pytest.mark.parametrize("weight_kind,bias_kind", PARAMS)
def test_batch_norm_cpp_autograd_matches_python_functions(impl, device, weight_kind, bias_kind, monkeypatch):
    x = torch.randn(4, 3, 5, 5, device=device, dtype=torch.float64, requires_grad=True)
    w, b = _param(weight_kind, 3, device, 0.5), _param(bias_kind, 3, device, -0.5)
    cpp = _first_and_second(_batch_norm, x, w, b)
    assert _batch_norm(x, w, b).grad_fn.name() == "fastgan::NormActBackward"  # the C++ node
    _python_functions(monkeypatch)
    assert type(_batch_norm(x, w, b).grad_fn).__name__ == "NormActFnBackward"
    _assert_same_bits(cpp, _first_and_second(_batch_norm, x, w, b))


@pytest.mark.parametrize("impl,device", CUDA)
@pytest.mark.parametrize("op", ["layer", "pixel_shuffle_batch", "eval_batch"])
def test_other_groupings_match_python_functions(impl, device, op, monkeypatch):
    """Per-sample tables (layer norm), pixel-shuffled y (upscale 2), constant statistics (eval mode)."""
    if op == "layer":
        x = torch.randn(3, 4, 3, 5, device=device, dtype=torch.float64, requires_grad=True)
        fn = lambda x, w, b: layer_norm_act(x, w, b, impl="cuda")  # noqa: E731
        channels = 4
    elif op == "pixel_shuffle_batch":
        x = torch.randn(3, 8, 3, 3, device=device, dtype=torch.float64, requires_grad=True)
        fn = lambda x, w, b: pixel_shuffle_batch_norm_act(x, 2, None, None, w, b, impl="cuda")  # noqa: E731
        channels = 2
    else:
        x = torch.randn(4, 3, 5, 5, device=device, dtype=torch.float64, requires_grad=True)
        rm = torch.randn(3, device=device, dtype=torch.float64)
        rv = torch.rand(3, device=device, dtype=torch.float64) + 0.5
        fn = lambda x, w, b: batch_norm_act(x, rm, rv, w, b, False, impl="cuda")  # noqa: E731
        channels = 3
    w, b = _param("param", channels, device, 0.5), _param("param", channels, device, -0.5)
    _assert_cpp_matches_python_functions(fn, x, w, b, monkeypatch)


@pytest.mark.parametrize("impl,device", CUDA)
def test_forward_adds_one_node_on_the_inputs(impl, device):
    x = torch.randn(4, 3, 2, 2, device=device, requires_grad=True)
    w, b = torch.rand(3, device=device, requires_grad=True), torch.rand(3, device=device, requires_grad=True)
    y = _batch_norm(x, w, b)
    inputs = [fn for fn, _ in y.grad_fn.next_functions if fn is not None]
    assert {type(fn).__name__ for fn in inputs} == {"AccumulateGrad"}
    assert [id(fn.variable) for fn in inputs] == [id(x), id(w), id(b)]
    # a plain backward builds nothing; create_graph builds the differentiable backward's node
    (dx,) = torch.autograd.grad(_batch_norm(x, w, b).sum(), x)
    assert dx.grad_fn is None
    (dx,) = torch.autograd.grad(_batch_norm(x, w, b).sum(), x, create_graph=True)
    assert "NormActGrad" in dx.grad_fn.name()


@pytest.mark.parametrize("impl,device", CUDA)
def test_third_order_raises_the_python_message(impl, device):
    x = torch.randn(4, 2, 3, 3, device=device, dtype=torch.float64, requires_grad=True)
    w = torch.rand(2, device=device, dtype=torch.float64, requires_grad=True)
    (dx,) = torch.autograd.grad((_batch_norm(x, w, None) ** 2).sum(), x, create_graph=True)
    (ddx,) = torch.autograd.grad((dx ** 2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="first and second derivatives only"):
        torch.autograd.grad(ddx.sum(), x)
    assert "first and second derivatives only" in THIRD_ORDER_MESSAGE  # one message on both paths


@pytest.mark.parametrize("impl,device", CUDA)
def test_inference_and_no_grad_give_the_training_output(impl, device):
    x = torch.randn(4, 3, 2, 2, device=device)
    w, b = torch.rand(3, device=device, requires_grad=True), torch.rand(3, device=device)
    y = _batch_norm(x, w, b)
    with torch.no_grad():
        y_no_grad = _batch_norm(x, w, b)
    with torch.inference_mode():
        y_inference = _batch_norm(x, w, b)
    assert torch.equal(y.detach(), y_no_grad) and torch.equal(y.detach(), y_inference)
    assert y_no_grad.grad_fn is None and y_inference.grad_fn is None


@pytest.mark.parametrize("impl,device", CUDA)
def test_input_modified_in_place_after_forward_raises(impl, device):
    """The node keeps x (its backward reads it): an in-place change must fail the backward, not
    silently use the new values."""
    x = torch.randn(4, 3, 2, 2, device=device, requires_grad=True)
    h = x * 1.0
    y = _batch_norm(h, None, None)
    h.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_which_calls_the_cpp_autograd_takes():
    """With the batch's statistics the double-backward coefficient kernel takes (C,) weights and at most
    65535 rows: other calls stay on the Python Functions.  With constant statistics the C++ side
    computes the coefficients itself, so it takes (N, C) tables (virtual batch norm's) and any rows."""
    tables = torch.ones(2, 3)
    assert not _norm_act.cpp_autograd_fits(tables, None) and not _norm_act.cpp_autograd_fits(None, tables)
    assert _norm_act.cpp_autograd_fits(tables[0], tables[0], 65535)
    assert not _norm_act.cpp_autograd_fits(None, None, 65536)
    assert _norm_act.cpp_autograd_fits(tables, tables, 65536, batch_stats=False)


@pytest.mark.parametrize("impl,device", CUDA)
@pytest.mark.parametrize("weight_kind,bias_kind", PARAMS)
@pytest.mark.parametrize("reference_batch", [False, True])
def test_virtual_batch_norm_matches_python_functions(impl, device, weight_kind, bias_kind, reference_batch,
                                                     monkeypatch):
    """Virtual batch norm: (N, C) affine tables as weight and bias of the fused op (constant statistics;
    autograd carries the tables' derivatives into x, the reference statistics, weight and bias); the
    reference batch itself has (C,) tables.  The same bits as the Python Functions, first and second
    order, including the reference statistics' gradients."""
    from fastgan.ops import virtual_batch_norm

    x = torch.randn(3, 4, 3, 2, device=device, dtype=torch.float64, requires_grad=True)
    w, b = _param(weight_kind, 4, device, 0.5), _param(bias_kind, 4, device, -0.5)
    ref_mean = torch.randn(4, device=device, dtype=torch.float64, requires_grad=True)
    ref_sq = (ref_mean.detach() ** 2 + torch.rand(4, device=device, dtype=torch.float64) + 0.5).requires_grad_()

    def fn(x, w, b):
        return virtual_batch_norm(x, ref_mean, ref_sq, 8, w, b, activation="leaky_relu", impl="cuda",
                                  reference_batch=reference_batch)

    def results():
        out = _first_and_second(fn, x, w, b)
        y = fn(x, w, b)
        return out + list(torch.autograd.grad(y, [ref_mean, ref_sq], torch.ones_like(y)))

    assert fn(x, w, b).grad_fn.name() == "fastgan::NormActBackward"
    cpp = results()
    _python_functions(monkeypatch)
    assert type(fn(x, w, b).grad_fn).__name__ == "NormActFnBackward"
    _assert_same_bits(cpp, results())


@pytest.mark.parametrize("impl,device", CUDA)
def test_per_sample_tables_need_constant_statistics(impl, device):
    from fastgan import _backend

    op = _backend.kernels("cuda", "batch_norm_act").norm_act
    x = torch.randn(2, 3, 4, device=device)
    table, vec = torch.ones(2, 3, device=device), torch.ones(3, device=device)
    assert op(x, table, table, table * 0, table, table, table * 0, 3, False, 1, 0.2).shape == x.shape
    with pytest.raises(ValueError, match=r"weight must be None or a \(C,\) vector \(per-sample tables: with "
                                         r"constant statistics only\)"):
        op(x, table, None, vec * 0, vec, vec, vec * 0, 3, True, 1, 0.2)
    with pytest.raises(ValueError, match="bias must be None or a .C,. vector or a table shaped like scale"):
        op(x, None, torch.ones(3, 3, device=device), table * 0, table, table, table * 0, 3, False, 1, 0.2)


@pytest.mark.parametrize("impl,device", CUDA)
def test_second_backward_needs_retain_graph(impl, device):
    """The node frees its saved tensors after a backward (release_variables), as PyTorch's nodes do."""
    x = torch.randn(4, 3, 2, 2, device=device, requires_grad=True)
    w = torch.rand(3, device=device, requires_grad=True)
    y = _batch_norm(x, w, None)
    gy = torch.randn_like(y)
    first = torch.autograd.grad(y, [x, w], gy, retain_graph=True)
    again = torch.autograd.grad(y, [x, w], gy)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        torch.autograd.grad(y, [x, w], gy)


@pytest.mark.parametrize("impl,device", CUDA)
@pytest.mark.parametrize("running_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layer", ["batch_norm", "pixel_shuffle_batch_norm"])
def test_running_stats_and_half_parameters_match_python_functions(impl, device, running_dtype, layer, monkeypatch):
    """Float16 weight and bias (and, for batch norm, float16 x); float32 running stats are updated by the
    statistics kernel inside norm_act_stats (pixel shuffle: upscale 2), float16 ones after it (the
    two-call path).  Output, gradients and the updated running stats equal the Python Functions' bit
    for bit."""
    def run():
        torch.manual_seed(0)
        if layer == "batch_norm":
            x = torch.randn(6, 3, 4, 4, device=device).half().requires_grad_()
            fn = lambda *a: batch_norm_act(*a, True, 0.3, 1e-5, impl="cuda")  # noqa: E731
        else:
            x = torch.randn(5, 12, 3, 4, device=device).requires_grad_()
            fn = lambda x, *a: pixel_shuffle_batch_norm_act(x, 2, *a, True, 0.3, 1e-5, impl="cuda")  # noqa: E731
        w = (torch.rand(3, device=device) + 0.5).half().requires_grad_()
        b = torch.randn(3, device=device).half().requires_grad_()
        rm = torch.zeros(3, device=device, dtype=running_dtype)
        rv = torch.ones(3, device=device, dtype=running_dtype)
        y = fn(x, rm, rv, w, b)
        grads = torch.autograd.grad(y, [x, w, b], torch.randn_like(y))
        return [y, *grads, rm, rv]

    cpp = run()
    _python_functions(monkeypatch)
    python = run()
    _assert_same_bits(cpp, python)
    assert cpp[2].dtype == torch.float16
    assert cpp[-2].dtype == running_dtype and not torch.equal(cpp[-2], torch.zeros_like(cpp[-2]))


@pytest.mark.parametrize("impl,device", CUDA)
@pytest.mark.parametrize("weight_kind,bias_kind", PARAMS)
@pytest.mark.parametrize("mode", ["batch", "eval", "act"])
def test_pixel_shuffle_cpp_autograd_matches_python_functions(impl, device, weight_kind, bias_kind, mode,
                                                             monkeypatch):
    """Per-output-channel tables, repeated inside the C++ op (and their gradients summed back there)
    vs repeat_interleave in front of the Python Functions: the same bits, first and second order,
    with the node directly on x, weight and bias (no repeat_interleave nodes)."""
    if mode == "act" and weight_kind != "none":
        pytest.skip("pixel_shuffle_act has a bias only")
    x = torch.randn(3, 8, 3, 2, device=device, dtype=torch.float64, requires_grad=True)
    w, b = _param(weight_kind, 2, device, 0.5), _param(bias_kind, 2, device, -0.5)
    rm = torch.randn(2, device=device, dtype=torch.float64)
    rv = torch.rand(2, device=device, dtype=torch.float64) + 0.5
    if mode == "act":
        fn = lambda x, w, b: pixel_shuffle_act(x, 2, b, impl="cuda")  # noqa: E731
    else:
        fn = lambda x, w, b: pixel_shuffle_batch_norm_act(x, 2, rm, rv, w, b, mode == "batch",  # noqa: E731
                                                          impl="cuda")
    _assert_cpp_matches_python_functions(fn, x, w, b, monkeypatch)


@pytest.mark.parametrize("impl,device", CUDA)
def test_pixel_shuffle_tables_must_be_per_output_channel(impl, device):
    """With upscale > 1 the op takes (C / r^2,) tables; per-input-channel ones are refused by name."""
    from fastgan import _backend

    op = _backend.kernels("cuda", "batch_norm_act").norm_act
    x = torch.randn(2, 8, 3, 3, device=device)
    out, full = torch.ones(2, device=device), torch.ones(8, device=device)
    y = op(x, None, None, out, out, out, out * 0, 8, False, 1, 0.2, 2)
    assert y.shape == (2, 2, 6, 6)
    with pytest.raises(ValueError, match=r"per output channel: scale must be a \(C / upscale\^2,\) = \(2,\)"):
        op(x, None, None, out, out, full, out, 8, False, 1, 0.2, 2)
    with pytest.raises(ValueError, match="per output channel: weight must be"):
        op(x, full, None, out, out, out, out, 8, False, 1, 0.2, 2)
    with pytest.raises(ValueError, match="shift must have mean's dtype"):
        op(x, None, None, out, out, out, out.double(), 8, False, 1, 0.2, 2)
