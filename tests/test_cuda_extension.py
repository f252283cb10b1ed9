"""fastgan._C: the CUDA ops ``torch.ops.fastgan.*`` of the fused batch norm + activation.

CPU part (runs wherever the extension was built): ``fastgan._C`` imports,
registers every op with the schema of its Triton twin, and the fake
implementations give the right shapes, dtypes and strides.

GPU part (``@pytest.mark.cuda``, skipped without a GPU): every primitive
against the Triton function of the same name and against plain PyTorch
formulas in float64, for every dtype and layout, odd and larger sizes,
unaligned storage, run-to-run determinism, tensors past 2^31 elements, bad
input, ``torch.library.opcheck``, and a CUDA-graph capture of forward +
backward through ``fastgan.ops.batch_norm_act(..., impl="cuda")``.

Pixel-shuffle mode (``upscale`` r > 1, the last argument of the five norm_act
ops): the schema default and the fakes on CPU; on the GPU every primitive with
pixel-shuffled y-side tensors against the float64 formulas (y-side outputs
pixel-unshuffled back), against the Triton kernels, determinism, bad input
and opcheck.
"""
import inspect
import math
import pathlib
import warnings

import pytest
import torch
import torch.nn.functional as F

import fastgan
from _tolerances import TOL, assert_close
from conftest import cuda_emu_skip_reason, emulated_cuda_ops

PACKAGE_DIR = pathlib.Path(fastgan.__file__).resolve().parent
BUILT = sorted(PACKAGE_DIR.glob("_C*.so")) + sorted(PACKAGE_DIR.glob("_C*.pyd"))

needs_ext = pytest.mark.skipif(
    not BUILT, reason=f"fastgan._C is not built (no {PACKAGE_DIR}/_C*.so): build it with "
                      "FASTGAN_BUILD_CUDA=1 pip install --no-build-isolation -e .")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def gpu_test(fn):
    """A GPU test of the extension: marked cuda, skipped without a GPU or a build."""
    return pytest.mark.cuda(needs_gpu(needs_ext(fn)))


def _devices():
    emu_skip = cuda_emu_skip_reason()
    return [pytest.param("cuda", id="gpu", marks=[pytest.mark.cuda, needs_gpu, needs_ext]),
            pytest.param("cpu", id="emu", marks=[pytest.mark.cuda_emu,
                                                 pytest.mark.skipif(emu_skip is not None, reason=emu_skip or "")])]


def kernel_test(fn):
    """A test of the extension's kernels, run with ``dev`` = "cuda" on the GPU (the built
    fastgan._C) and with ``dev`` = "cpu" on the CPU emulator (csrc/ built by tests/cuda_emu)."""
    return pytest.mark.parametrize("dev", _devices())(fn)


SCHEMAS = {
    "channel_stats": "fastgan::channel_stats(Tensor x) -> (Tensor, Tensor)",
    "row_moments": "fastgan::row_moments(Tensor x) -> (Tensor, Tensor)",
    "norm_act_forward":
        "fastgan::norm_act_forward(Tensor x, Tensor scale, Tensor shift, int act, float slope, "
        "int upscale=1) -> Tensor",
    "norm_act_backward_reduce":
        "fastgan::norm_act_backward_reduce(Tensor gy, Tensor x, Tensor scale, Tensor shift, Tensor mean, "
        "Tensor invstd, int act, float slope, int upscale=1) -> (Tensor, Tensor)",
    "norm_act_backward_apply":
        "fastgan::norm_act_backward_apply(Tensor gy, Tensor x, Tensor scale, Tensor shift, Tensor mean, "
        "Tensor invstd, Tensor k1, Tensor k2, Tensor k3, int act, float slope, int upscale=1) -> Tensor",
    "norm_act_double_reduce":
        "fastgan::norm_act_double_reduce(Tensor u, Tensor gy, Tensor x, Tensor scale, Tensor shift, "
        "Tensor mean, Tensor invstd, int act, float slope, int upscale=1) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    "norm_act_double_apply":
        "fastgan::norm_act_double_apply(Tensor u, Tensor gy, Tensor x, Tensor scale, Tensor shift, "
        "Tensor mean, Tensor invstd, Tensor a1, Tensor a2, Tensor a3, Tensor b1, Tensor b2, Tensor b3, "
        "Tensor b4, int act, float slope, int upscale=1) -> (Tensor, Tensor)",
}

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
MEMORY_FORMATS = {
    "contiguous": torch.contiguous_format,
    "channels_last": torch.channels_last,
    "channels_last_3d": torch.channels_last_3d,
}


def acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def ops(dev="cuda"):
    """The ops of fastgan._C (dev "cuda"), or the same ops built for the CPU emulator (dev "cpu")."""
    if dev == "cpu":
        return emulated_cuda_ops()
    import fastgan._C  # noqa: F401  (registers torch.ops.fastgan.*)
    from fastgan.ops import _fake  # noqa: F401

    return torch.ops.fastgan


# ============================================================================= CPU: build and registration


@needs_ext
def test_extension_imports_and_registers_every_op():
    import fastgan._C  # noqa: F401

    for name, schema in SCHEMAS.items():
        assert hasattr(torch.ops.fastgan, name), f"torch.ops.fastgan.{name} is not registered"
        assert str(getattr(torch.ops.fastgan, name).default._schema) == schema
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastgan::{name}", "CUDA"), name


def test_jit_build_compiles_with_setup_py_flags(monkeypatch):
    """A JIT-built extension (no prebuilt one) must round as the installed one does: same nvcc
    flags as setup.py (no --use_fast_math, whose division and sqrt are approximate)."""
    import ast
    import re

    from torch.utils import cpp_extension

    from fastgan import _ext

    setup_py = (PACKAGE_DIR.parent / "setup.py").read_text()
    installed = ast.literal_eval(re.search(r'"nvcc":\s*(\[[^\]]*\])', setup_py).group(1))
    seen = {}
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: seen.update(kw))
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", "/usr/local/cuda")
    monkeypatch.setenv("FASTGAN_JIT", "1")
    ok, reason = _ext._jit_build()
    assert ok, reason
    assert seen["extra_cuda_cflags"] == installed


@needs_ext
def test_ext_loader_finds_the_prebuilt_extension():
    from fastgan import _ext

    ok, reason = _ext.load()
    assert ok, reason
    assert "prebuilt" in reason


@needs_ext
def test_schemas_match_the_triton_functions():
    """The autograd Functions call both backends positionally: same names, same order."""
    pytest.importorskip("triton")
    import fastgan._C  # noqa: F401
    from fastgan.kernels import batch_norm_act as triton_kernels

    missing = []
    for name in SCHEMAS:
        params = list(inspect.signature(getattr(triton_kernels, name)).parameters.values())
        schema_args = getattr(torch.ops.fastgan, name).default._schema.arguments
        op_args = [a.name for a in schema_args]
        assert op_args == [p.name for p in params[:len(op_args)]], name
        for a, p in zip(schema_args, params):  # optional arguments: same defaults on both backends
            if a.default_value is not None or p.default is not inspect.Parameter.empty:
                assert a.default_value == p.default, f"{name}({a.name}): {a.default_value!r} != {p.default!r}"
        # Triton parameters past the op's must be optional: calls that leave them out run on either backend.
        extra = params[len(op_args):]
        assert all(p.default is not inspect.Parameter.empty for p in extra), name
        missing += [f"{name}({p.name}={p.default!r})" for p in extra]
    if missing:
        warnings.warn("Triton parameters the CUDA ops do not take yet (calls passing them need "
                      "impl='triton'): " + ", ".join(missing), UserWarning)


@needs_ext
def test_every_op_has_a_fake_impl():
    from fastgan.ops import _fake

    ops()
    for name in SCHEMAS:
        assert name in _fake.FAKES
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastgan::{name}", "Meta"), name


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,fmt", [((5, 3, 7, 5), "contiguous"), ((5, 3, 7, 5), "channels_last"),
                                       ((6, 4), "contiguous"), ((2, 3, 2, 3, 2), "channels_last_3d")])
@pytest.mark.parametrize("per_sample", [False, True], ids=["vectors", "tables"])
def test_fake_impls_give_shapes_dtypes_strides(dtype, shape, fmt, per_sample):
    op = ops()
    x = torch.empty(shape, dtype=dtype, device="meta").contiguous(memory_format=MEMORY_FORMATS[fmt])
    n, c = shape[0], shape[1]
    table = (n, c) if per_sample else (c,)
    acc = acc_dtype(dtype)
    v = torch.empty(table, dtype=acc, device="meta")

    def check_tables(outs, count, shape=table):
        assert len(outs) == count
        for t in outs:
            assert t.shape == shape and t.dtype == acc

    def check_big(t):
        assert t.shape == x.shape and t.dtype == dtype and t.stride() == x.stride()

    check_tables(op.channel_stats(x), 2, (c,))
    check_tables(op.row_moments(x), 2, (n, c))
    check_big(op.norm_act_forward(x, v, v, 2, 0.2))
    check_tables(op.norm_act_backward_reduce(x, x, v, v, v, v, 2, 0.2), 2)
    check_big(op.norm_act_backward_apply(x, x, v, v, v, v, v, v, v, 2, 0.2))
    check_tables(op.norm_act_double_reduce(x, x, x, v, v, v, v, 2, 0.2), 5)
    ggx, ggy = op.norm_act_double_apply(x, x, x, v, v, v, v, v, v, v, v, v, v, v, 2, 0.2)
    check_big(ggx)
    check_big(ggy)


@needs_ext
def test_fake_impls_under_fake_tensor_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    op = ops()
    with FakeTensorMode():
        x = torch.empty(4, 3, 5, 5).contiguous(memory_format=torch.channels_last)
        v = torch.empty(3)
        y = op.norm_act_forward(x, v, v, 2, 0.2)
        mean, var = op.channel_stats(x)
    assert y.shape == x.shape and y.stride() == x.stride()
    assert mean.shape == (3,) and var.dtype == torch.float32


# ============================================================================= GPU: the primitives


class Case:
    """Inputs of every primitive for one shape, dtype, layout and kind of
    per-channel arguments, on the GPU: (C,) vectors (batch norm) or, with
    ``per_sample``, (N, C) tables (group / instance / layer norm).

    x is built from z = x * scale + shift drawn with |z| >= 0.25, so the
    activation's mask (z > 0) does not depend on rounding and every
    implementation agrees on it.
    """

    def __init__(self, shape, dtype, fmt="contiguous", slope=0.2, act=2, per_sample=False, device="cuda"):
        acc = acc_dtype(dtype)
        n, c = shape[0], shape[1]
        self.shape, self.dtype, self.acc, self.act, self.slope = shape, dtype, acc, act, slope
        self.per_sample = per_sample
        self.table = (n, c) if per_sample else (c,)
        spatial = list(range(2, len(shape)))
        self.dims = spatial if per_sample else [0] + spatial  # the reductions' dims
        scale = torch.rand(self.table, dtype=torch.float64) + 0.5
        shift = torch.randn(self.table, dtype=torch.float64) * 0.5
        z = torch.randn(shape, dtype=torch.float64)
        z = z + 0.25 * z.sign()
        x = ((z - self.v(shift)) / self.v(scale)).to(dtype)
        gy = torch.randn(shape, dtype=torch.float64).to(dtype)
        u = torch.randn(shape, dtype=torch.float64).to(dtype)
        mem = MEMORY_FORMATS[fmt]
        self.x, self.gy, self.u = (t.to(device).contiguous(memory_format=mem) for t in (x, gy, u))
        xd = x.double()
        mean = self.reduce(xd, "mean")
        invstd = torch.rsqrt(self.reduce((xd - self.v(mean)) ** 2, "mean") + 1e-5)
        self.scale, self.shift, self.mean, self.invstd = (t.to(device=device, dtype=acc)
                                                          for t in (scale, shift, mean, invstd))
        self.coef = [torch.randn(self.table, dtype=torch.float64).to(device=device, dtype=acc) for _ in range(7)]

    def reduce(self, t, how="sum"):
        """Sum (or mean) over the reduction dims: per channel, or per (n, c)."""
        if not self.dims:  # per (n, c) of a tensor without spatial dims
            return t
        return t.sum(self.dims) if how == "sum" else t.mean(self.dims)

    def v(self, t):
        """A (C,) vector or (N, C) table, broadcastable against x, in float64."""
        lead = [self.shape[0], self.shape[1]] if self.per_sample else [1, self.shape[1]]
        return t.double().reshape(lead + [1] * (len(self.shape) - 2))

    # float64 formulas on the (rounded) inputs
    def terms(self):
        xd, gyd, ud = self.x.double(), self.gy.double(), self.u.double()
        z = xd * self.v(self.scale) + self.v(self.shift)
        s = torch.where(z > 0, torch.ones_like(z), torch.full_like(z, self.slope))
        xhat = (xd - self.v(self.mean)) * self.v(self.invstd)
        return xd, gyd, ud, z, s, gyd * s, xhat

    def sum(self, t):
        """(sum, sum of |t|) over the reduction dims."""
        return self.reduce(t), self.reduce(t.abs())


def assert_sums_close(actual, expected_and_abs, name):
    """Per-entry sums: a sum of M terms in float32 is exact to about eps * sum|t|,
    so the bound is relative to the terms' magnitudes (16 eps32, 1e4 eps64), not to
    the (possibly cancelling) sum itself."""
    expected, abs_sum = expected_and_abs
    assert actual.shape == expected.shape, name
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    rel = 1e-6 if actual.dtype == torch.float32 else 1e-12
    bound = rel * abs_sum + TOL[actual.dtype][0]
    err = (actual.double() - expected).abs()
    assert (err <= bound).all(), f"{name}: max error {err.max().item():.3g}, bound {bound.min().item():.3g}"


def assert_big(out, expected, case, name):
    assert out.dtype == case.dtype and out.shape == case.x.shape, name
    assert out.stride() == case.x.stride(), f"{name}: strides {out.stride()} != x's {case.x.stride()}"
    assert_close(out, expected, case.dtype, name=name)


def run_all(k, case):
    """Every primitive of kernel module k (torch.ops.fastgan or the Triton module) on case."""
    c = case
    a = (c.act, c.slope)
    out = {}
    out["stats"] = k.row_moments(c.x) if c.per_sample else k.channel_stats(c.x)
    out["y"] = k.norm_act_forward(c.x, c.scale, c.shift, *a)
    out["bw_sums"] = k.norm_act_backward_reduce(c.gy, c.x, c.scale, c.shift, c.mean, c.invstd, *a)
    out["dx"] = k.norm_act_backward_apply(c.gy, c.x, c.scale, c.shift, c.mean, c.invstd, *c.coef[:3], *a)
    out["dd_sums"] = k.norm_act_double_reduce(c.u, c.gy, c.x, c.scale, c.shift, c.mean, c.invstd, *a)
    out["gg"] = k.norm_act_double_apply(c.u, c.gy, c.x, c.scale, c.shift, c.mean, c.invstd, *c.coef, *a)
    return out


def reference_stats(case):
    """channel_stats: (mean, biased var) per channel; row_moments: (mean, M2) per (n, c)."""
    xd = case.x.double()
    mean = case.reduce(xd, "mean")
    dev2 = (xd - case.v(mean)) ** 2
    return mean, case.reduce(dev2) if case.per_sample else case.reduce(dev2, "mean")


def reference_sums(case):
    """float64 (sum, sum of |terms|) of every gradient sum."""
    xd, gyd, ud, z, s, gz, xhat = case.terms()
    bw = [case.sum(gz), case.sum(gz * xhat)]
    return {"bw_sums": bw, "dd_sums": bw + [case.sum(ud), case.sum(ud * xhat), case.sum(gz * ud)]}


def check_against_formulas(out, case):
    xd, gyd, ud, z, s, gz, xhat = case.terms()
    k1, k2, k3, b1, b2, b3, b4 = (case.v(t) for t in case.coef)
    for got, want, what in zip(out["stats"], reference_stats(case), ("mean", "var / M2")):
        assert got.dtype == case.acc and got.shape == case.table, what
        assert_close(got, want, case.acc, name=f"moments {what}")
    assert_big(out["y"], torch.where(z > 0, z, z * case.slope), case, "norm_act_forward")
    sums = reference_sums(case)
    for name in ("bw_sums", "dd_sums"):
        assert len(out[name]) == len(sums[name])
        for i, (got, want) in enumerate(zip(out[name], sums[name])):
            assert got.dtype == case.acc
            assert_sums_close(got, want, f"{name}[{i}]")
    assert_big(out["dx"], k1 * gz + k2 + k3 * xhat, case, "norm_act_backward_apply")
    ggx, ggy = out["gg"]
    assert_big(ggx, b1 * gz + b2 * ud + b3 + b4 * xhat, case, "norm_act_double_apply ggx")
    assert_big(ggy, s * (k1 * ud + k2 + k3 * xhat), case, "norm_act_double_apply ggy")


def check_against_triton(out, ref, case):
    for got, want in zip(out["stats"], ref["stats"]):
        assert_close(got, want, case.acc, name="moments vs triton")
    sums = reference_sums(case)
    for name in ("bw_sums", "dd_sums"):
        for i, (got, want, (_, abs_sum)) in enumerate(zip(out[name], ref[name], sums[name])):
            # both approximate the same float64 sums: compare at the sums' bound (see assert_sums_close)
            assert_sums_close(got, (want.double(), 2 * abs_sum), f"{name}[{i}] vs triton")
    for name in ("y", "dx"):
        assert_close(out[name], ref[name], case.dtype, name=f"{name} vs triton")
    for got, want in zip(out["gg"], ref["gg"]):
        assert_close(got, want, case.dtype, name="double_apply vs triton")


SMALL = [
    ((5, 3, 7, 5), "contiguous"),          # odd sizes: scalar path
    ((5, 3, 7, 5), "channels_last"),
    ((4, 16, 8, 8), "contiguous"),         # S and C multiples of 8: 16-byte accesses
    ((4, 16, 8, 8), "channels_last"),
    ((6, 5), "contiguous"),                # (N, C): channels contiguous
    ((3, 4, 11), "contiguous"),
    ((2, 3, 2, 3, 2), "channels_last_3d"),
    ((3, 40, 1, 1), "channels_last"),      # S == 1
    ((1, 1, 9, 7), "contiguous"),          # N == C == 1
]
KINDS = [pytest.param(False, id="vectors"), pytest.param(True, id="tables")]


@kernel_test
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,fmt", SMALL)
@pytest.mark.parametrize("per_sample", KINDS)
@pytest.mark.parametrize("act,slope", [(2, 0.2), (1, 0.0), (0, 1.0)], ids=["leaky", "relu", "identity"])
def test_primitives_match_formulas(dtype, shape, fmt, per_sample, act, slope, dev):
    case = Case(shape, dtype, fmt, slope=slope, act=act, per_sample=per_sample, device=dev)
    check_against_formulas(run_all(ops(dev), case), case)


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,fmt", SMALL[:4] + SMALL[6:7])  # a subset: each new shape compiles Triton kernels
@pytest.mark.parametrize("per_sample", KINDS)
def test_primitives_match_triton(dtype, shape, fmt, per_sample):
    pytest.importorskip("triton")
    from fastgan.kernels import batch_norm_act as triton_kernels

    case = Case(shape, dtype, fmt, per_sample=per_sample)
    check_against_triton(run_all(ops(), case), run_all(triton_kernels, case), case)


@kernel_test
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,fmt", [((32, 64, 32, 32), "contiguous"), ((32, 64, 32, 32), "channels_last"),
                                       ((8, 3, 127, 129), "contiguous"), ((8, 3, 127, 129), "channels_last"),
                                       ((4096, 300), "contiguous")])
@pytest.mark.parametrize("per_sample", KINDS)
def test_primitives_large(dtype, shape, fmt, per_sample, dev):
    """Many partials per channel (the fixed-order merge), long per-thread loops."""
    if dev == "cpu" and per_sample and shape == (4096, 300):
        pytest.skip("1.2M per-entry warp reductions take about a minute per op on the emulator; the GPU runs it")
    pytest.importorskip("triton")
    from fastgan.kernels import batch_norm_act as triton_kernels

    case = Case(shape, dtype, fmt, per_sample=per_sample, device=dev)
    out = run_all(ops(dev), case)
    check_against_formulas(out, case)
    if dev == "cuda":  # on the emulator the Triton twin would run interpreted: far too slow at these sizes
        check_against_triton(out, run_all(triton_kernels, case), case)


@kernel_test
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_unaligned_storage_takes_the_scalar_path(fmt, dev):
    """Big tensors at an odd element offset: 16-byte accesses would be misaligned."""
    case = Case((4, 16, 8, 8), torch.float16, fmt, device=dev)

    def shifted(t):
        buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
        if fmt == "contiguous":
            out = buf[1:].view(t.shape)
        else:
            n, c, h, w = t.shape
            out = buf[1:].view(n, h, w, c).permute(0, 3, 1, 2)
        out.copy_(t)
        assert out.data_ptr() % 16 != 0 and out.stride() == t.stride()
        return out

    case.x, case.gy, case.u = shifted(case.x), shifted(case.gy), shifted(case.u)
    check_against_formulas(run_all(ops(dev), case), case)


@kernel_test
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_reductions_are_deterministic(fmt, dev):
    case = Case((64, 32, 16, 16), torch.float32, fmt, device=dev)
    op = ops(dev)
    first = run_all(op, case)
    for _ in range(3):
        again = run_all(op, case)
        for name in ("stats", "bw_sums", "dd_sums"):
            for a, b in zip(first[name], again[name]):
                assert torch.equal(a, b), name


@kernel_test
def test_welford_keeps_precision_with_a_large_mean(dev):
    """Mean 1e4, std 1: E[x^2] - E[x]^2 in float32 (ulp(1e8) = 8) would lose the variance."""
    for fmt in ("contiguous", "channels_last"):
        x = (torch.randn(64, 8, 32, 32, dtype=torch.float64, device=dev) + 1e4).float()
        x = x.contiguous(memory_format=MEMORY_FORMATS[fmt])
        mean, var = ops(dev).channel_stats(x)
        xd = x.double()
        torch.testing.assert_close(var.double(), xd.var([0, 2, 3], unbiased=False), rtol=1e-4, atol=0)
        torch.testing.assert_close(mean.double(), xd.mean([0, 2, 3]), rtol=1e-6, atol=0)


@kernel_test
def test_empty_batch(dev):
    op = ops(dev)
    x = torch.empty(0, 3, 4, 4, device=dev)
    mean, var = op.channel_stats(x)
    assert mean.shape == (3,) and (mean == 0).all() and (var == 0).all()
    v = torch.ones(3, device=dev)
    assert op.norm_act_forward(x, v, v, 2, 0.2).shape == x.shape
    sums = op.norm_act_double_reduce(x, x, x, v, v, v, v, 2, 0.2)
    assert len(sums) == 5 and all((s == 0).all() for s in sums)


@gpu_test
@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 2, 2**30 + 3), (2**29 + 1, 4)], ids=["rows", "channels-contiguous"])
def test_more_than_2_31_elements(shape):
    """int64 indexing: offsets past 2^31 (float16, about 4.3 GB per tensor)."""
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip("needs 24 GiB of free GPU memory")
    op = ops()
    x = torch.randn(shape, device="cuda", dtype=torch.float16)
    assert x.numel() >= 2**31
    c = shape[1]
    mean, var = op.channel_stats(x)
    for ch in range(c):
        xc = x[:, ch].float()
        v, m = torch.var_mean(xc, unbiased=False)
        torch.testing.assert_close(mean[ch], m, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(var[ch], v, rtol=1e-4, atol=1e-5)
        del xc
    scale = torch.rand(c, device="cuda") + 0.5
    shift = torch.randn(c, device="cuda")
    y = op.norm_act_forward(x, scale, shift, 2, 0.2)
    # the last elements sit past offset 2^31
    tail_x, tail_y = x.reshape(-1)[-4096:], y.reshape(-1)[-4096:]
    chans = (torch.arange(x.numel() - 4096, x.numel(), device="cuda") // (x.numel() // (shape[0] * c))) % c \
        if len(shape) == 3 else torch.arange(x.numel() - 4096, x.numel(), device="cuda") % c
    z = tail_x.double() * scale.double()[chans] + shift.double()[chans]
    assert_close(tail_y, torch.where(z > 0, z, 0.2 * z), torch.float16, name="forward tail")
    del y
    sums = op.norm_act_backward_reduce(x, x, scale, shift, mean, torch.rsqrt(var + 1e-5), 2, 0.2)
    assert all(torch.isfinite(s).all() for s in sums)


@kernel_test
def test_bad_input_raises_clear_errors(dev):
    op = ops(dev)
    x = torch.randn(4, 3, 5, 5, device=dev)
    v = torch.ones(3, device=dev)
    with pytest.raises(TypeError, match="float32, float16, bfloat16 or float64"):
        op.channel_stats(x.to(torch.int32))
    with pytest.raises(TypeError, match="scale must be Float"):
        op.norm_act_forward(x, v.double(), v, 2, 0.2)
    with pytest.raises(ValueError, match="shift must have shape"):
        op.norm_act_forward(x, v, torch.ones(4, device=dev), 2, 0.2)
    with pytest.raises(ValueError, match="contiguous or channels-last"):
        op.channel_stats(x.transpose(2, 3))
    with pytest.raises(ValueError, match="gy must have x's layout"):
        op.norm_act_backward_reduce(x.contiguous(memory_format=torch.channels_last), x, v, v, v, v, 2, 0.2)
    with pytest.raises(ValueError, match=r"mean must have shape \(4, 3\)"):
        op.norm_act_backward_reduce(x, x, torch.ones(4, 3, device=dev), torch.ones(4, 3, device=dev),
                                    v, v, 2, 0.2)
    with pytest.raises(ValueError, match="act must be"):
        op.norm_act_forward(x, v, v, 7, 0.2)
    if dev == "cuda":  # the ops are registered for CUDA tensors only (the emulator's for CPU ones)
        with pytest.raises((NotImplementedError, RuntimeError)):
            op.channel_stats(x.cpu())


@gpu_test
@pytest.mark.parametrize("per_sample", KINDS)
def test_opcheck(per_sample):
    op = ops()
    case = Case((5, 3, 7, 5), torch.float32, "channels_last", per_sample=per_sample)
    c, a = case, (case.act, case.slope)
    calls = {
        "channel_stats": (c.x,),
        "row_moments": (c.x,),
        "norm_act_forward": (c.x, c.scale, c.shift, *a),
        "norm_act_backward_reduce": (c.gy, c.x, c.scale, c.shift, c.mean, c.invstd, *a),
        "norm_act_backward_apply": (c.gy, c.x, c.scale, c.shift, c.mean, c.invstd, *c.coef[:3], *a),
        "norm_act_double_reduce": (c.u, c.gy, c.x, c.scale, c.shift, c.mean, c.invstd, *a),
        "norm_act_double_apply": (c.u, c.gy, c.x, c.scale, c.shift, c.mean, c.invstd, *c.coef, *a),
    }
    for name, args in calls.items():
        torch.library.opcheck(getattr(op, name).default, args)


# ============================================================================= GPU: CUDA graphs


@gpu_test
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_cuda_graph_capture_forward_backward(fmt):
    from fastgan.ops import batch_norm_act

    dev = "cuda"
    shape, c = (8, 16, 9, 7), 16
    mem = MEMORY_FORMATS[fmt]
    static_x = torch.randn(shape, device=dev).contiguous(memory_format=mem).requires_grad_()
    w = (torch.rand(c, device=dev) + 0.5).requires_grad_()
    b = torch.randn(c, device=dev).requires_grad_()
    rm, rv = torch.zeros(c, device=dev), torch.ones(c, device=dev)
    gy = torch.randn(shape, device=dev).contiguous(memory_format=mem)

    def step(x, running_mean, running_var, impl):
        y = batch_norm_act(x, running_mean, running_var, w, b, True, 0.1, 1e-5, "leaky_relu", 0.2, impl=impl)
        return (y, *torch.autograd.grad(y, (x, w, b), gy))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture (lazy loading, caches)
        for _ in range(2):
            step(static_x, rm, rv, "cuda")
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step(static_x, rm, rv, "cuda")

    for _ in range(2):
        new_x = torch.randn(shape, device=dev).contiguous(memory_format=mem)
        with torch.no_grad():
            static_x.copy_(new_x)
        rm_before, rv_before = rm.clone(), rv.clone()
        graph.replay()
        torch.cuda.synchronize()
        x_ref = new_x.clone().requires_grad_()
        rm_ref, rv_ref = rm_before.clone(), rv_before.clone()
        expected = step(x_ref, rm_ref, rv_ref, "ref")
        for name, got, want in zip(("y", "dx", "dw", "db"), static_out, expected):
            assert_close(got, want, torch.float32, name=f"graph replay {name}")
        assert_close(rm, rm_ref, torch.float32, name="running_mean")
        assert_close(rv, rv_ref, torch.float32, name="running_var")


@kernel_test
def test_ops_per_channel_outputs_are_independent_tensors(dev):
    """No output aliases another (schema without alias annotations)."""
    case = Case((4, 8, 3, 3), torch.float32, device=dev)
    sums = ops(dev).norm_act_double_reduce(case.u, case.gy, case.x, case.scale, case.shift, case.mean,
                                        case.invstd, 2, 0.2)
    ptrs = {s.untyped_storage().data_ptr() for s in sums}
    assert len(ptrs) == 5
    assert math.prod(sums[0].shape) == 8


# ============================================================================= pixel shuffle (upscale r > 1)

UPSCALE_OPS = ["norm_act_forward", "norm_act_backward_reduce", "norm_act_backward_apply", "norm_act_double_reduce",
               "norm_act_double_apply"]


@needs_ext
def test_upscale_is_the_last_argument_with_default_1():
    """Positional calls without it (every existing caller) keep working."""
    op = ops()
    for name in UPSCALE_OPS:
        last = getattr(op, name).default._schema.arguments[-1]
        assert last.name == "upscale" and str(last.type) == "int" and last.default_value == 1, name


def y_shape(shape, r):
    n, c, h, w = shape
    return (n, c // (r * r), h * r, w * r)


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,r", [((2, 12, 5, 7), 2), ((3, 18, 4, 3), 3), ((3, 8, 1, 1), 2)])
@pytest.mark.parametrize("per_sample", KINDS)
def test_fake_impls_upscale(dtype, shape, r, per_sample):
    op = ops()
    x = torch.empty(shape, dtype=dtype, device="meta")
    gy = torch.empty(y_shape(shape, r), dtype=dtype, device="meta")
    n, c = shape[0], shape[1]
    table = (n, c) if per_sample else (c,)
    acc = acc_dtype(dtype)
    v = torch.empty(table, dtype=acc, device="meta")

    def check_y(t):
        assert t.shape == y_shape(shape, r) and t.dtype == dtype and t.is_contiguous()

    def check_x(t):
        assert t.shape == x.shape and t.dtype == dtype and t.stride() == x.stride()

    def check_tables(outs, count):
        assert len(outs) == count and all(t.shape == table and t.dtype == acc for t in outs)

    check_y(op.norm_act_forward(x, v, v, 2, 0.2, r))  # positional
    check_y(op.norm_act_forward(x, v, v, 2, 0.2, upscale=r))
    check_tables(op.norm_act_backward_reduce(gy, x, v, v, v, v, 2, 0.2, upscale=r), 2)
    check_x(op.norm_act_backward_apply(gy, x, v, v, v, v, v, v, v, 2, 0.2, upscale=r))
    check_tables(op.norm_act_double_reduce(x, gy, x, v, v, v, v, 2, 0.2, upscale=r), 5)
    ggx, ggy = op.norm_act_double_apply(x, gy, x, v, v, v, v, v, v, v, v, v, v, v, 2, 0.2, upscale=r)
    check_x(ggx)
    check_y(ggy)
    # upscale=1 spelled out: x's shape and strides, as without it
    xc = x.contiguous(memory_format=torch.channels_last)
    y1 = op.norm_act_forward(xc, v, v, 2, 0.2, upscale=1)
    assert y1.shape == x.shape and y1.stride() == xc.stride()


@needs_ext
def test_fake_impls_upscale_errors_and_fake_tensor_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    op = ops()
    v6, v8 = torch.empty(6, device="meta"), torch.empty(8, device="meta")
    with pytest.raises(ValueError, match=r"divisible by upscale\^2 = 4"):
        op.norm_act_forward(torch.empty(2, 6, 3, 3, device="meta"), v6, v6, 2, 0.2, upscale=2)
    # a channels-last x is read as its contiguous copy (torch.compile may pass one): a contiguous y-side output
    y = op.norm_act_forward(torch.empty(2, 8, 3, 3, device="meta").contiguous(memory_format=torch.channels_last),
                            v8, v8, 2, 0.2, upscale=2)
    assert y.shape == (2, 2, 6, 6) and y.is_contiguous()
    with pytest.raises(ValueError, match=r"needs x with shape \(N, C, H, W\)"):
        op.norm_act_forward(torch.empty(2, 8, 3, device="meta"), v8, v8, 2, 0.2, upscale=2)
    with pytest.raises(ValueError, match="upscale must be a positive int"):
        op.norm_act_forward(torch.empty(2, 8, 3, 3, device="meta"), v8, v8, 2, 0.2, upscale=0)
    with FakeTensorMode():
        x = torch.empty(4, 8, 5, 3)
        v = torch.empty(8)
        y = op.norm_act_forward(x, v, v, 2, 0.2, upscale=2)
    assert y.shape == (4, 2, 10, 6) and y.is_contiguous()


def run_all_shuffled(k, case, r):
    """run_all with the y-side tensors pixel-shuffled (upscale=r): gy is passed as
    pixel_shuffle(case.gy, r) and the y-side outputs (y, ggy) are pixel-unshuffled
    back, so the results compare with run_all's, the formulas and the other backend."""
    c = case
    a = (c.act, c.slope)
    gy = F.pixel_shuffle(c.gy, r).contiguous()
    ys = gy.shape

    def back(t, name):
        assert t.shape == ys and t.dtype == c.dtype and t.is_contiguous(), f"{name}: {t.shape} {t.stride()}"
        return F.pixel_unshuffle(t, r)

    out = {}
    out["stats"] = k.row_moments(c.x) if c.per_sample else k.channel_stats(c.x)
    out["y"] = back(k.norm_act_forward(c.x, c.scale, c.shift, *a, upscale=r), "y")
    out["bw_sums"] = k.norm_act_backward_reduce(gy, c.x, c.scale, c.shift, c.mean, c.invstd, *a, upscale=r)
    out["dx"] = k.norm_act_backward_apply(gy, c.x, c.scale, c.shift, c.mean, c.invstd, *c.coef[:3], *a, upscale=r)
    out["dd_sums"] = k.norm_act_double_reduce(c.u, gy, c.x, c.scale, c.shift, c.mean, c.invstd, *a, upscale=r)
    ggx, ggy = k.norm_act_double_apply(c.u, gy, c.x, c.scale, c.shift, c.mean, c.invstd, *c.coef, *a, upscale=r)
    out["gg"] = (ggx, back(ggy, "ggy"))
    return out


SHUFFLE_SMALL = [
    pytest.param((2, 12, 5, 7), 2, id="odd-r2"),
    pytest.param((3, 18, 4, 3), 3, id="r3"),
    pytest.param((2, 16, 3, 5), 4, id="r4"),
    pytest.param((4, 32, 8, 8), 2, id="mult8-r2"),
    pytest.param((2, 50, 3, 2), 5, id="r5"),
    pytest.param((2, 8, 1, 9), 2, id="H1"),
    pytest.param((2, 8, 9, 1), 2, id="W1"),
    pytest.param((3, 8, 1, 1), 2, id="S1"),   # y offsets equal x's: the channels-contiguous kernels
    pytest.param((1, 4, 3, 3), 2, id="N1C4"),
]


@kernel_test
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,r", SHUFFLE_SMALL)
@pytest.mark.parametrize("per_sample", KINDS)
@pytest.mark.parametrize("act,slope", [(2, 0.2), (1, 0.0), (0, 1.0)], ids=["leaky", "relu", "identity"])
def test_shuffled_primitives_match_formulas(dtype, shape, r, per_sample, act, slope, dev):
    case = Case(shape, dtype, "contiguous", slope=slope, act=act, per_sample=per_sample, device=dev)
    check_against_formulas(run_all_shuffled(ops(dev), case, r), case)


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,r", [SHUFFLE_SMALL[i] for i in (0, 1, 3, 7)])  # each new shape compiles Triton
@pytest.mark.parametrize("per_sample", KINDS)
def test_shuffled_primitives_match_triton(dtype, shape, r, per_sample):
    pytest.importorskip("triton")
    from fastgan.kernels import batch_norm_act as triton_kernels

    case = Case(shape, dtype, "contiguous", per_sample=per_sample)
    check_against_triton(run_all_shuffled(ops(), case, r), run_all_shuffled(triton_kernels, case, r), case)


@kernel_test
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,r", [((32, 256, 16, 16), 2), ((8, 12, 63, 65), 2), ((16, 72, 9, 9), 3)])
@pytest.mark.parametrize("per_sample", KINDS)
def test_shuffled_primitives_large(dtype, shape, r, per_sample, dev):
    """Many partials per entry and long grid-stride walks (carries across w, h, sub-channels, n)."""
    pytest.importorskip("triton")
    from fastgan.kernels import batch_norm_act as triton_kernels

    case = Case(shape, dtype, "contiguous", per_sample=per_sample, device=dev)
    out = run_all_shuffled(ops(dev), case, r)
    check_against_formulas(out, case)
    if dev == "cuda":  # on the emulator the Triton twin would run interpreted: far too slow at these sizes
        check_against_triton(out, run_all_shuffled(triton_kernels, case, r), case)


@kernel_test
def test_upscale_1_is_the_plain_op(dev):
    """upscale=1 spelled out runs the plain kernels: the same bits as leaving it out."""
    case = Case((4, 16, 8, 8), torch.float32, "contiguous", device=dev)
    plain = run_all(ops(dev), case)
    c, a = case, (case.act, case.slope)
    op = ops(dev)
    assert torch.equal(op.norm_act_forward(c.x, c.scale, c.shift, *a, 1), plain["y"])
    for got, want in zip(op.norm_act_double_reduce(c.u, c.gy, c.x, c.scale, c.shift, c.mean, c.invstd, *a,
                                                   upscale=1), plain["dd_sums"]):
        assert torch.equal(got, want)


@kernel_test
def test_shuffled_reductions_are_deterministic(dev):
    case = Case((64, 32, 16, 16), torch.float32, "contiguous", device=dev)
    op = ops(dev)
    first = run_all_shuffled(op, case, 2)
    for _ in range(3):
        again = run_all_shuffled(op, case, 2)
        for name in ("bw_sums", "dd_sums"):
            for a, b in zip(first[name], again[name]):
                assert torch.equal(a, b), name


@kernel_test
def test_shuffled_empty_batch(dev):
    op = ops(dev)
    x = torch.empty(0, 8, 3, 3, device=dev)
    v = torch.ones(8, device=dev)
    assert op.norm_act_forward(x, v, v, 2, 0.2, upscale=2).shape == (0, 2, 6, 6)
    gy = torch.empty(0, 2, 6, 6, device=dev)
    sums = op.norm_act_double_reduce(x, gy, x, v, v, v, v, 2, 0.2, upscale=2)
    assert len(sums) == 5 and all((s == 0).all() for s in sums)


@kernel_test
def test_upscale_bad_input_raises_clear_errors(dev):
    op = ops(dev)
    x = torch.randn(4, 8, 5, 5, device=dev)
    v = torch.ones(8, device=dev)
    gy = torch.randn(4, 2, 10, 10, device=dev)
    with pytest.raises(ValueError, match="upscale must be a positive int"):
        op.norm_act_forward(x, v, v, 2, 0.2, upscale=0)
    v6 = torch.ones(6, device=dev)
    with pytest.raises(ValueError, match=r"x's channels \(6\) divisible by upscale\^2 = 4"):
        op.norm_act_forward(torch.randn(4, 6, 5, 5, device=dev), v6, v6, 2, 0.2, upscale=2)
    # x, u and gy in another layout (torch.compile's Inductor may pass a channels-last x to a backward) are read
    # as their contiguous copies: the same results as contiguous ones
    x_cl = x.contiguous(memory_format=torch.channels_last)
    gy_nc = gy.transpose(2, 3).contiguous().transpose(2, 3)  # gy's values, not contiguous
    y = op.norm_act_forward(x, v, v, 2, 0.2, upscale=2)
    assert torch.equal(op.norm_act_forward(x_cl, v, v, 2, 0.2, upscale=2), y)
    dx = op.norm_act_backward_apply(gy, x, v, v, v, v, v, v, v, 2, 0.2, upscale=2)
    dx_other = op.norm_act_backward_apply(gy_nc, x_cl, v, v, v, v, v, v, v, 2, 0.2, upscale=2)
    assert torch.equal(dx, dx_other) and dx_other.is_contiguous()
    sums = op.norm_act_double_reduce(x, gy, x, v, v, v, v, 2, 0.2, upscale=2)
    for a, b in zip(sums, op.norm_act_double_reduce(x_cl, gy_nc, x_cl, v, v, v, v, 2, 0.2, upscale=2)):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"needs x with shape \(N, C, H, W\)"):
        op.norm_act_forward(torch.randn(4, 8, 5, device=dev), v, v, 2, 0.2, upscale=2)
    with pytest.raises(ValueError, match="gy must have the pixel-shuffled shape"):
        op.norm_act_backward_reduce(x, x, v, v, v, v, 2, 0.2, upscale=2)  # gy in x's shape
    with pytest.raises(TypeError, match="gy must have x's dtype"):
        op.norm_act_double_apply(x, gy.double(), x, v, v, v, v, v, v, v, v, v, v, v, 2, 0.2, upscale=2)
    with pytest.raises(ValueError, match="u must have x's shape"):
        op.norm_act_double_reduce(gy, gy, x, v, v, v, v, 2, 0.2, upscale=2)  # u is x-side


@gpu_test
@pytest.mark.parametrize("per_sample", KINDS)
def test_opcheck_upscale(per_sample):
    op = ops()
    r = 2
    case = Case((3, 8, 5, 3), torch.float32, "contiguous", per_sample=per_sample)
    c, a = case, (case.act, case.slope)
    gy = F.pixel_shuffle(c.gy, r).contiguous()
    calls = {
        "norm_act_forward": (c.x, c.scale, c.shift, *a),
        "norm_act_backward_reduce": (gy, c.x, c.scale, c.shift, c.mean, c.invstd, *a),
        "norm_act_backward_apply": (gy, c.x, c.scale, c.shift, c.mean, c.invstd, *c.coef[:3], *a),
        "norm_act_double_reduce": (c.u, gy, c.x, c.scale, c.shift, c.mean, c.invstd, *a),
        "norm_act_double_apply": (c.u, gy, c.x, c.scale, c.shift, c.mean, c.invstd, *c.coef, *a),
    }
    for name, args in calls.items():
        torch.library.opcheck(getattr(op, name).default, args, {"upscale": r})


@gpu_test
@pytest.mark.parametrize("norm", [True, False], ids=["batch_norm", "bias"])
def test_pixel_shuffle_ops_dispatch_to_cuda_and_match_triton(norm, monkeypatch):
    """fastgan.ops.pixel_shuffle_* with impl="cuda" (and "auto" on CUDA tensors) run these
    kernels; forward, backward and double backward agree with impl="triton"."""
    pytest.importorskip("triton")
    from fastgan import _backend
    from fastgan.ops import pixel_shuffle_act, pixel_shuffle_batch_norm_act

    monkeypatch.delenv("FASTGAN_IMPL", raising=False)
    used = []
    kernels = _backend.kernels
    monkeypatch.setattr(_backend, "kernels", lambda backend, op: used.append(backend) or kernels(backend, op))
    xs = torch.randn(2, 8, 3, 3, device="cuda")
    pixel_shuffle_batch_norm_act(xs, 2, impl="auto") if norm else pixel_shuffle_act(xs, 2, impl="auto")
    assert used and set(used) == {"cuda"}, used
    monkeypatch.setattr(_backend, "kernels", kernels)

    r, dev = 2, "cuda"
    x0 = torch.randn(4, 8 * r * r, 6, 5, device=dev)
    w0, b0 = torch.rand(8, device=dev) + 0.5, torch.randn(8, device=dev)

    def run(impl):
        x, w, b = (t.clone().requires_grad_() for t in (x0, w0, b0))
        if norm:
            y = pixel_shuffle_batch_norm_act(x, r, None, None, w, b, True, 0.1, 1e-5, "leaky_relu", impl=impl)
        else:
            y = pixel_shuffle_act(x, r, b, "leaky_relu", impl=impl)
        lin = torch.linspace(-1, 1, y.numel(), device=dev).reshape(y.shape)
        grads = torch.autograd.grad(y, (x, w, b), lin, create_graph=True, allow_unused=True)
        g = [t for t in grads if t is not None]
        second = torch.autograd.grad(sum((t ** 2).sum() for t in g), (x, w, b), allow_unused=True)
        return [y] + g + [t for t in second if t is not None]

    for i, (a, e) in enumerate(zip(run("cuda"), run("triton"))):
        assert_close(a, e, torch.float32, scale=1 if i == 0 else 4, name=f"output[{i}]")


@kernel_test
@pytest.mark.parametrize("norm", [True, False], ids=["batch_norm", "bias"])
def test_pixel_shuffle_cuda_gradcheck_gradgradcheck_float64(norm, dev):
    from torch.autograd import gradcheck, gradgradcheck

    from fastgan.ops import pixel_shuffle_act, pixel_shuffle_batch_norm_act

    r = 2
    x = torch.randn(2, 2 * r * r, 3, 2, dtype=torch.float64, device=dev, requires_grad=True)
    w = (torch.rand(2, dtype=torch.float64, device=dev) + 0.5).requires_grad_()
    b = torch.randn(2, dtype=torch.float64, device=dev, requires_grad=True)
    if norm:
        def fn(x, w, b):
            return pixel_shuffle_batch_norm_act(x, r, None, None, w, b, True, 0.1, 1e-5, impl="cuda")
        inputs = (x, w, b)
    else:
        def fn(x, b):
            return pixel_shuffle_act(x, r, b, "leaky_relu", impl="cuda")
        inputs = (x, b)
    assert gradcheck(fn, inputs) and gradgradcheck(fn, inputs)
