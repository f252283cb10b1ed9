"""stats_affine (statistics -> invstd, affine tables, running-stat update in one launch): fast vs ref."""
import pytest
import torch

from fastgan import _backend
from fastgan.reference.batch_norm_act import stats_affine as ref_stats_affine

from _tolerances import assert_close
from conftest import all_backend_params


def _kernels(impl):
    return _backend.kernels(impl, "batch_norm_act")


def _inputs(c, dtype, device, weight, bias, running):
    mean = torch.randn(c, dtype=dtype, device=device) * 2
    var = torch.rand(c, dtype=dtype, device=device) * 3 + 1e-3
    var[0] = 0.0  # a constant channel: invstd = 1 / sqrt(eps)
    w = torch.randn(c, dtype=dtype, device=device) if weight else None
    b = torch.randn(c, dtype=dtype, device=device) if bias else None
    rm = torch.randn(c, dtype=dtype, device=device) if running else None
    rv = torch.rand(c, dtype=dtype, device=device) + 0.5 if running else None
    return mean, var, w, b, rm, rv


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("c", [1, 7, 300])  # one program, a partial block, several blocks
@pytest.mark.parametrize("weight,bias", [(True, True), (False, False), (True, False), (False, True)])
@pytest.mark.parametrize("running", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_matches_ref(impl, device, c, weight, bias, running, dtype):
    mean, var, w, b, rm, rv = _inputs(c, dtype, device, weight, bias, running)
    count, momentum, eps = 37, 0.3, 1e-5
    rm_ref, rv_ref = (rm.clone(), rv.clone()) if running else (None, None)
    got = _kernels(impl).stats_affine(mean, var, w, b, rm, rv, count, momentum, eps)
    want = ref_stats_affine(mean, var, w, b, rm_ref, rv_ref, count, momentum, eps)
    for name, g, e in zip(("invstd", "scale", "shift"), got, want):
        assert g.shape == e.shape and g.dtype == e.dtype, name
        assert_close(g, e, dtype, name=name)
    if running:
        assert_close(rm, rm_ref, dtype, name="running_mean")
        assert_close(rv, rv_ref, dtype, name="running_var")
        assert not torch.equal(rv, rv_ref.new_zeros(c))


def test_ref_is_the_batch_norm_formula():
    mean, var, w, b, rm, rv = _inputs(5, torch.float64, "cpu", True, True, True)
    rm0, rv0 = rm.clone(), rv.clone()
    invstd, scale, shift = ref_stats_affine(mean, var, w, b, rm, rv, 10, 0.1, 1e-5)
    torch.testing.assert_close(invstd, 1 / torch.sqrt(var + 1e-5))
    x = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(x * scale + shift, (x - mean) * invstd * w + b)
    torch.testing.assert_close(rm, 0.9 * rm0 + 0.1 * mean)
    torch.testing.assert_close(rv, 0.9 * rv0 + 0.1 * var * 10 / 9)


@pytest.mark.parametrize("impl,device", all_backend_params())
def test_running_stats_need_two_values(impl, device):
    mean, var, w, b, rm, rv = _inputs(4, torch.float32, device, True, True, True)
    with pytest.raises((ValueError, RuntimeError), match="count"):
        _kernels(impl).stats_affine(mean, var, w, b, rm, rv, 1, 0.1, 1e-5)


# ----------------------------------------------------------------------------- channel_stats_affine

from fastgan.reference.batch_norm_act import channel_stats_affine as ref_channel_stats_affine  # noqa: E402


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("shape,channels_last", [((6, 5, 3, 4), False), ((6, 5, 3, 4), True), ((9, 70), False)])
@pytest.mark.parametrize("weight,bias", [(True, True), (False, False), (True, False)])
@pytest.mark.parametrize("running", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_channel_stats_affine_matches_ref(impl, device, shape, channels_last, weight, bias, running, dtype):
    """The statistics and, from the merge step, stats_affine's outputs and running-stat update."""
    x = torch.randn(shape, device=device).to(dtype) * 2 + 0.5
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    c = shape[1]
    _, _, w, b, rm, rv = _inputs(c, acc, device, weight, bias, running)
    rm_ref, rv_ref = (rm.clone(), rv.clone()) if running else (None, None)
    rm0 = rm.clone() if running else None
    got = _kernels(impl).channel_stats_affine(x, w, b, rm, rv, 0.3, 1e-5)
    want = ref_channel_stats_affine(x, w, b, rm_ref, rv_ref, 0.3, 1e-5)
    for name, g, e in zip(("mean", "var", "invstd", "scale", "shift"), got, want):
        assert g.shape == (c,) and g.dtype == acc, name
        assert_close(g, e, acc, name=name)
    if running:
        assert_close(rm, rm_ref, acc, name="running_mean")
        assert_close(rv, rv_ref, acc, name="running_var")
        assert not torch.equal(rm, rm0)  # really updated in place


def _triton_interpreter_or_skip():
    from conftest import _interpreter_skip_reason

    reason = _interpreter_skip_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.parametrize("partials", [1, 2, 3])
@pytest.mark.parametrize("shape,channels_last", [((3, 2, 1500), False), ((2, 64, 10, 10), True)])
@pytest.mark.parametrize("running", [True, False])
def test_triton_statistics_single_pass_and_merged_partials_match_ref(partials, shape, channels_last, running,
                                                                     monkeypatch):
    """The Triton statistics take one kernel where one program per channel block and segment sees its whole
    segment (partials = 1) and partials + a merge kernel otherwise.  On a GPU which one runs depends on its
    size; the interpreter sizes launches for few programs, so each is forced here on shapes of several tiles
    (NCHW: 4500 positions of 2048-wide tiles; channels-last: 200 of 64), batch and per-sample statistics."""
    _triton_interpreter_or_skip()
    from fastgan.kernels import batch_norm_act as tk

    monkeypatch.setattr(tk._Geometry, "_num_partials", lambda self, x: min(self.num_tiles, partials))
    monkeypatch.setattr(tk, "_GEOMETRIES", {})
    x = torch.randn(shape) * 2 + 0.5
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    c = shape[1]
    _, _, w, b, rm, rv = _inputs(c, torch.float32, "cpu", True, True, running)
    rm_ref, rv_ref = (rm.clone(), rv.clone()) if running else (None, None)
    assert tk._geometry(x, None).partials == min(tk._geometry(x, None).num_tiles, partials)
    assert tk._geometry(x, None).num_tiles >= 3  # so that partials 2 and 3 really split the segment
    got = tk.channel_stats_affine(x, w, b, rm, rv, 0.3, 1e-5)
    want = ref_channel_stats_affine(x, w, b, rm_ref, rv_ref, 0.3, 1e-5)
    for name, g, e in zip(("mean", "var", "invstd", "scale", "shift"), got, want):
        assert_close(g, e, torch.float32, name=name)
    if running:
        assert_close(rm, rm_ref, torch.float32, name="running_mean")
        assert_close(rv, rv_ref, torch.float32, name="running_var")
    # per sample: each sample a segment (instance / group / layer norm's moments)
    row_mean, row_m2 = tk.row_moments(x)
    flat = x.reshape(shape[0], c, -1).double()
    mean_ref, m2_ref = _moments(flat)
    assert_close(row_mean, mean_ref.float(), torch.float32, name="row_mean")
    assert_close(row_m2, m2_ref.float(), torch.float32, name="row_m2")


@pytest.mark.parametrize("partials", [1, 3])
@pytest.mark.parametrize("shape,channels_last", [((3, 2, 1500), False), ((2, 64, 10, 10), True)])
def test_triton_layer_with_single_or_merged_partials_matches_ref(partials, shape, channels_last, monkeypatch):
    """A whole fused batch norm layer -- forward, backward, double backward -- with its reductions (statistics
    and gradient sums) in one program per segment or split into partials and merged, against ref."""
    _triton_interpreter_or_skip()
    from fastgan import reference
    from fastgan.kernels import batch_norm_act as tk
    from fastgan.ops import batch_norm_act

    monkeypatch.setattr(tk._Geometry, "_num_partials", lambda self, x: min(self.num_tiles, partials))
    monkeypatch.setattr(tk, "_GEOMETRIES", {})
    x = torch.randn(shape) * 2 + 0.5
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    c = shape[1]
    w, b = torch.randn(c) + 1, torch.randn(c)
    outs = []
    for fn in (lambda *a: batch_norm_act(*a, impl="triton"), reference.batch_norm_act):
        xi, wi, bi = (t.clone().requires_grad_() for t in (x, w, b))
        y = fn(xi, None, None, wi, bi, True, 0.1, 1e-5, "leaky_relu", 0.2)
        gx, gw = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), (xi, wi),
                                     create_graph=True)
        penalty = gx.square().sum() + gw.square().sum()
        outs.append((y, gx, gw, *torch.autograd.grad(penalty, (xi, wi, bi), allow_unused=True)))
    names = ("y", "dx", "dw", "ggx", "ggw", "ggb")
    for name, got, want in zip(names, *outs):
        if want is None:
            assert got is None or not got.any(), name
            continue
        assert_close(got, want, torch.float32, name=name)


def test_channel_stats_affine_ref_is_channel_stats_then_stats_affine():
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    w, b = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    mean, var, invstd, scale, shift = ref_channel_stats_affine(x, w, b, rm, rv, 0.1, 1e-5)
    torch.testing.assert_close(mean, x.mean((0, 2)))
    torch.testing.assert_close(var, x.var((0, 2), unbiased=False))
    torch.testing.assert_close(rv, 0.9 + 0.1 * x.var((0, 2), unbiased=True))
    torch.testing.assert_close(x * scale[:, None] + shift[:, None],
                               torch.nn.functional.batch_norm(x, None, None, w, b, True, 0.0, 1e-5))


@pytest.mark.parametrize("impl,device", all_backend_params())
def test_channel_stats_affine_running_stats_need_two_values(impl, device):
    x = torch.randn(1, 4, 1, device=device)
    with pytest.raises((ValueError, RuntimeError), match="more than 1 value per channel"):
        _kernels(impl).channel_stats_affine(x, None, None, torch.zeros(4, device=device),
                                            torch.ones(4, device=device), 0.1, 1e-5)


# ----------------------------------------------------------------------------- group_stats_affine

from fastgan.reference.group_norm_act import group_stats_affine as ref_group_stats_affine  # noqa: E402


def _moments(x):
    """Per-(n, c) mean and M2 over the spatial positions of x (N, C, S)."""
    mean = x.mean(-1)
    return mean, ((x - mean[..., None]) ** 2).sum(-1)


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("n,c,groups,spatial", [(3, 8, 1, 5), (2, 6, 3, 1), (4, 5, 5, 7), (1, 600, 2, 3)])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_group_fast_matches_ref(impl, device, n, c, groups, spatial, affine, dtype):
    x = torch.randn(n, c, spatial, dtype=dtype, device=device) * 2 + torch.randn(n, c, 1, dtype=dtype, device=device)
    row_mean, row_m2 = _moments(x)
    w = torch.randn(c, dtype=dtype, device=device) if affine else None
    b = torch.randn(c, dtype=dtype, device=device) if affine else None
    got = _kernels(impl).group_stats_affine(row_mean, row_m2, w, b, groups, spatial, 1e-5)
    want = ref_group_stats_affine(row_mean, row_m2, w, b, groups, spatial, 1e-5)
    for name, g, e in zip(("mean", "invstd", "scale", "shift"), got, want):
        assert g.shape == (n, c) and g.dtype == dtype, name
        assert_close(g, e, dtype, name=name)


def test_group_ref_is_the_group_norm_formula():
    n, c, groups, spatial = 3, 6, 2, 4
    x = torch.randn(n, c, spatial, dtype=torch.float64)
    w, b = torch.randn(c, dtype=torch.float64), torch.randn(c, dtype=torch.float64)
    mean_t, invstd_t, scale, shift = ref_group_stats_affine(*_moments(x), w, b, groups, spatial, 1e-5)
    expected = torch.nn.functional.group_norm(x, groups, w, b, 1e-5)
    torch.testing.assert_close(x * scale[..., None] + shift[..., None], expected)
    xg = x.reshape(n, groups, -1)
    torch.testing.assert_close(mean_t[:, ::c // groups], xg.mean(-1))
    torch.testing.assert_close(invstd_t[:, ::c // groups], torch.rsqrt(xg.var(-1, unbiased=False) + 1e-5))


# ----------------------------------------------------------------------------- row_stats_affine

from fastgan.reference.group_norm_act import row_stats_affine as ref_row_stats_affine  # noqa: E402


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("shape,groups,channels_last", [((3, 8, 4, 5), 1, False), ((3, 8, 4, 5), 4, True),
                                                        ((2, 6, 7), 6, False), ((4, 5), 1, False)])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_row_stats_affine_matches_ref(impl, device, shape, groups, channels_last, affine, dtype):
    """The per-(n, c) moments and their group statistics in one call: the same bits as row_moments then
    group_stats_affine on the same backend, and the reference's values."""
    x = (torch.randn(shape, device=device) * 2 + torch.randn(shape[:2] + (1,) * (len(shape) - 2), device=device))
    x = x.to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    c = shape[1]
    w = torch.randn(c, dtype=acc, device=device) if affine else None
    b = torch.randn(c, dtype=acc, device=device) if affine else None
    k = _kernels(impl)
    got = k.row_stats_affine(x, w, b, groups, 1e-5)
    row_mean, row_m2 = k.row_moments(x)
    spatial = x.numel() // (shape[0] * c)
    two_calls = k.group_stats_affine(row_mean, row_m2, w, b, groups, spatial, 1e-5)
    want = ref_row_stats_affine(x, w, b, groups, 1e-5)
    for name, g, t, e in zip(("mean", "invstd", "scale", "shift"), got, two_calls, want):
        assert g.shape == (shape[0], c) and g.dtype == acc, name
        assert torch.equal(g, t), name
        assert_close(g, e, acc, name=name)
