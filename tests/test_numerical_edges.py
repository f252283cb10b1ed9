"""Numerical edge cases (issue 12): zero variance, huge and tiny half-precision
magnitudes, eps handling, and exactly-zero gradient norms in the penalties.

Every case runs on ``ref`` and each fast backend; results must be finite and
match ``ref`` (and, where a closed form exists, the closed form or a float64
computation from the same low-precision input).
"""
import pytest
import torch
import torch.nn.functional as F

from fastgan import nn as fnn
from fastgan import ops
from fastgan.penalties import KINDS, gradient_penalty

from _strategies import assert_matches
from _tolerances import assert_close
from conftest import all_backend_params

BACKENDS = [pytest.param("ref", "cpu", id="ref")] + all_backend_params()
C = 4


def _params(device, c=C):
    g = torch.Generator().manual_seed(3)
    w = (torch.rand(c, generator=g) + 0.5).to(device)
    # |bias| >= 0.25: a constant input normalises to z = bias, away from the activation's kink
    b = ((torch.rand(c, generator=g) + 0.25) * torch.tensor([1.0, -1.0] * (c // 2))).to(device)
    return w, b


def _vbn_stats(x):
    return ops.virtual_batch_reference_stats(x, impl="ref")


# name -> (x shape, call(x, w, b, impl)); each normalises x with statistics of x itself
NORM_OPS = {
    "batch_norm": ((3, C, 2, 2), lambda x, w, b, impl, eps=1e-5: ops.batch_norm_act(
        x, None, None, w, b, True, 0.1, eps, "leaky_relu", 0.2, impl=impl)),
    "group_norm": ((3, C, 2, 2), lambda x, w, b, impl, eps=1e-5: ops.group_norm_act(
        x, 2, w, b, eps, "leaky_relu", 0.2, impl=impl)),
    "layer_norm": ((3, C, 2, 2), lambda x, w, b, impl, eps=1e-5: ops.layer_norm_act(
        x, w, b, eps, "leaky_relu", 0.2, impl=impl)),
    "instance_norm": ((3, C, 2, 2), lambda x, w, b, impl, eps=1e-5: ops.instance_norm_act(
        x, None, None, w, b, True, 0.1, eps, "leaky_relu", 0.2, impl=impl)),
    "virtual_batch_norm": ((3, C, 2, 2), lambda x, w, b, impl, eps=1e-5: ops.virtual_batch_norm(
        x, *ops.virtual_batch_reference_stats(x.detach()[:2] * 1, impl=impl), 2, w, b, eps, "leaky_relu", 0.2,
        impl=impl)),
    "pixel_shuffle_batch_norm": ((2, 4 * C, 1, 2), lambda x, w, b, impl, eps=1e-5: ops.pixel_shuffle_batch_norm_act(
        x, 2, None, None, w, b, True, 0.1, eps, "leaky_relu", 0.2, impl=impl)),
}


def _to_second_order(call, x0, w0, b0, impl, **kw):
    """y, (dx, dw, db), (ddx, ddw) for a gradient-penalty-like scalar of the first derivatives."""
    x, w, b = (t.detach().clone().requires_grad_(True) for t in (x0, w0, b0))
    y = call(x, w, b, impl, **kw)
    gy = torch.linspace(-1, 1, y.numel(), device=y.device).reshape(y.shape).to(y.dtype)
    first = torch.autograd.grad(y, (x, w, b), gy, create_graph=True)
    scalar = sum((g.float() ** 2).sum() for g in first[:2])
    second = torch.autograd.grad(scalar, (x, w), allow_unused=True)
    return y.detach(), [g.detach() for g in first], second


# ----------------------------------------------------------------------------- zero variance


@pytest.mark.parametrize("impl,device", BACKENDS)
@pytest.mark.parametrize("op", list(NORM_OPS))
def test_constant_input_is_finite_and_matches_ref(impl, device, op):
    """Zero variance: xhat = 0, so y = act(bias) exactly; derivatives finite and equal to ref's.

    The constant 0.75 is exact in every dtype and its sums are exact, so the
    mean is exactly 0.75 in every backend (a constant like 0.1 has a mean off
    by an ulp, which 1/sqrt(eps) turns into a visible, backend-dependent
    value -- see ``test_inexact_constant_stays_finite``)."""
    shape, call = NORM_OPS[op]
    x = torch.full(shape, 0.75, device=device)
    w, b = _params(device)
    # VBN: eps = 1e-2 (r = 1/sqrt(eps) = 10), see the tolerance note below
    eps = 1e-2 if op == "virtual_batch_norm" else 1e-5
    y, first, second = _to_second_order(call, x, w, b, impl, eps=eps)
    y_ref, first_ref, second_ref = _to_second_order(call, x, w, b, "ref", eps=eps)
    bias = b.view(1, -1, 1, 1)
    expected = F.leaky_relu(bias.expand_as(y), 0.2)
    if op != "virtual_batch_norm":  # VBN mixes in the reference stats (here equal: the same constant)
        assert_close(y, expected, torch.float32, name=f"{op} y")
    assert_matches(y, y_ref, torch.float32, f"{op} y")
    # VBN's fused path is act(x * scale + shift) with differentiable tables scale = w r,
    # shift = b - mu * scale, so its dw comes from sum(gz x) - mu sum(gz), which cancel
    # exactly only in exact arithmetic: their float32 rounding is amplified by
    # r = 1/sqrt(eps) (r^2 in the second derivatives; the other ops reduce gz * xhat with
    # xhat = 0 exactly).  So VBN runs at r = 10 with tolerances scaled by r and r^2.
    r = 10.0 if op == "virtual_batch_norm" else 1.0
    for name, a, e in zip(("dx", "dw", "db"), first, first_ref):
        assert_matches(a, e, torch.float32, f"{op} {name}", scale=r)
    for name, a, e in zip(("ddx", "ddw"), second, second_ref):
        assert_matches(a, e, torch.float32, f"{op} {name}", scale=4.0 * r * r)


@pytest.mark.parametrize("impl,device", BACKENDS)
@pytest.mark.parametrize("op,dtype,value", [
    ("batch_norm", torch.float32, 1000.1), ("batch_norm", torch.bfloat16, 0.1), ("group_norm", torch.float16, 0.1),
    ("virtual_batch_norm", torch.float32, 1000.1), ("virtual_batch_norm", torch.float16, 0.1)])
def test_inexact_constant_stays_finite(impl, device, op, dtype, value):
    """A constant that is not exact in binary: the output and its derivatives finite.
    (First order only: the exact constant above covers the second; this one is about
    the ulp-off mean that 1/sqrt(eps) amplifies, and the interpreter is slow.)"""
    shape, call = NORM_OPS[op]
    w, b = _params(device)
    x = torch.full(shape, value, device=device, dtype=dtype).requires_grad_(True)
    wg, bg = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    y = call(x, wg, bg, impl)
    first = torch.autograd.grad(y, (x, wg, bg), torch.ones_like(y))
    for name, t in zip(("y", "dx", "dw", "db"), (y,) + first):
        assert torch.isfinite(t).all(), f"{op} {dtype} constant {value}: {name} not finite"


@pytest.mark.parametrize("impl,device", BACKENDS)
def test_virtual_batch_norm_tiny_variance_next_to_a_large_mean(impl, device):
    """s - mu^2 (E[x^2] - E[x]^2, the paper's statistics) cancels catastrophically for
    x = 1000 + 1e-3 noise and came out negative: NaN.  It is clamped at 0."""
    g = torch.Generator().manual_seed(0)
    x_ref = (1000 + torch.randn(4, 3, 2, 2, generator=g) * 1e-3).to(device)
    x = (1000 + torch.randn(2, 3, 2, 2, generator=g) * 1e-3).to(device)
    mean, sq = ops.virtual_batch_reference_stats(x_ref, impl=impl)
    for live, reference_batch in ((x, False), (x_ref, True)):
        y = ops.virtual_batch_norm(live, mean, sq, 4, impl=impl, reference_batch=reference_batch)
        assert torch.isfinite(y).all()
        # |x - mu| <= ~1e-2 and 1 / sqrt(eps + var) <= 1 / sqrt(eps): |y| <= ~3.2e0
        assert y.abs().max() < 10


# ----------------------------------------------------------------------------- half-precision magnitudes

MAGNITUDES = {
    # (dtype, scale, offset, eps): values near float16's max (65504); float16 at 1e-4 (near its
    # subnormals, variance 1e-8 far below the default eps, so a small eps keeps the output O(1));
    # bfloat16 at 1e18 (squares 1e36 still fit the float32 statistics) and at 1e-12 (variance
    # 1e-24).  eps must stay above ~1e-25 in float32 statistics: the variance's derivative
    # carries (var + eps)^-1.5, which overflows float32 beyond that.
    "fp16-huge": (torch.float16, 100.0, 6.0e4, 1e-5),
    "fp16-tiny": (torch.float16, 1e-4, 0.0, 1e-12),
    "bf16-huge": (torch.bfloat16, 1e18, 0.0, 1e-5),
    "bf16-tiny": (torch.bfloat16, 1e-12, 3e-12, 1e-30),
}


def _float64_truth(x, groups_dims, eps):
    """(x - mean) / sqrt(var + eps) in float64 from the low-precision x, over the given dims."""
    xd = x.double()
    mean = xd.mean(groups_dims, keepdim=True)
    var = xd.var(groups_dims, unbiased=False, keepdim=True)
    return (xd - mean) / torch.sqrt(var + eps)


@pytest.mark.parametrize("impl,device", BACKENDS)
@pytest.mark.parametrize("case", list(MAGNITUDES))
def test_half_precision_extremes_use_float32_statistics(impl, device, case):
    """Batch / instance norm of huge and tiny float16 / bfloat16 values: finite, equal
    to the float64 normalisation of the same low-precision input (2e-2), and the
    backward finite.  Fails if statistics accumulate in the input dtype (x^2
    overflows float16 at 256, the sum of 6e4s at 2 values)."""
    dtype, scale, offset, eps = MAGNITUDES[case]
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64) * scale + offset)
    x = x.clamp(-65000, 65000).to(dtype).to(device) if dtype == torch.float16 else x.to(dtype).to(device)
    for name, dims, call in (
            ("batch_norm", (0, 2, 3), lambda t: ops.batch_norm_act(t, None, None, None, None, True, 0.1, eps,
                                                                   "identity", impl=impl)),
            ("instance_norm", (2, 3), lambda t: ops.instance_norm_act(t, eps=eps, activation="identity", impl=impl))):
        xg = x.clone().requires_grad_(True)
        y = call(xg)
        assert y.dtype == dtype and torch.isfinite(y).all(), f"{case} {name}: non-finite output"
        assert_close(y, _float64_truth(x, dims, eps).to(dtype), dtype, name=f"{case} {name}")
        (dx,) = torch.autograd.grad(y, xg, torch.ones_like(y))
        assert torch.isfinite(dx).all(), f"{case} {name}: non-finite gradient"


@pytest.mark.parametrize("impl,device", BACKENDS)
@pytest.mark.parametrize("case", list(MAGNITUDES))
def test_penalty_norms_of_extreme_half_precision_gradients(impl, device, case):
    """Per-sample norms of huge / tiny float16 and bfloat16 gradients accumulate in float32:
    finite and equal to float64 (squares of 6e4 overflow float16)."""
    dtype, scale, offset, _ = MAGNITUDES[case]
    g = torch.Generator().manual_seed(2)
    grad = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64) * scale + offset
    grad = (grad.clamp(-65000, 65000) if dtype == torch.float16 else grad).to(dtype).to(device)
    norms64 = grad.double().flatten(1).norm(dim=1)
    if not torch.isfinite((norms64 ** 2).float()).all():
        pytest.skip("the squared norm does not fit float32")  # never for these magnitudes; a guard
    value, norms = ops.penalty_from_grad(grad, "squared", return_norms=True, impl=impl)
    assert torch.isfinite(value) and torch.isfinite(norms).all()
    assert_close(norms, norms64.float(), torch.float32, scale=10, name=f"{case} norms")
    assert_close(value, (norms64 ** 2).mean().float(), torch.float32, scale=10, name=f"{case} value")


# ----------------------------------------------------------------------------- eps


EPS_OPS = {
    "batch_norm_act": lambda x, eps, impl: ops.batch_norm_act(x, None, None, None, None, True, 0.1, eps, impl=impl),
    "group_norm_act": lambda x, eps, impl: ops.group_norm_act(x, 2, eps=eps, impl=impl),
    "layer_norm_act": lambda x, eps, impl: ops.layer_norm_act(x, eps=eps, impl=impl),
    "instance_norm_act": lambda x, eps, impl: ops.instance_norm_act(x, eps=eps, impl=impl),
    "virtual_batch_norm": lambda x, eps, impl: ops.virtual_batch_norm(x, x.mean((0, 2, 3)), (x * x).mean((0, 2, 3)),
                                                                      2, eps=eps, impl=impl),
    "pixel_shuffle_batch_norm_act": lambda x, eps, impl: ops.pixel_shuffle_batch_norm_act(x, 1, eps=eps, impl=impl),
}


@pytest.mark.parametrize("impl,device", BACKENDS)
@pytest.mark.parametrize("op", list(EPS_OPS))
@pytest.mark.parametrize("eps,exc", [(0.0, ValueError), (-1e-5, ValueError), (float("nan"), ValueError),
                                     (True, TypeError), ("1e-5", TypeError), (None, TypeError)])
def test_eps_must_be_a_positive_float(impl, device, op, eps, exc):
    """eps = 0 with a zero-variance group would divide by zero, so it is rejected
    outright (as are negative, NaN and non-number eps), naming eps."""
    x = torch.randn(2, 4, 2, 2, device=device)
    with pytest.raises(exc, match=r"\beps\b"):
        EPS_OPS[op](x, eps, impl)


@pytest.mark.parametrize("cls,args", [(fnn.BatchNormAct2d, (4,)), (fnn.GroupNormAct, (2, 4)),
                                      (fnn.LayerNormAct2d, (4,)), (fnn.InstanceNormAct2d, (4,)),
                                      (fnn.VirtualBatchNorm2d, (4,)), (fnn.MinibatchStdDev, (4,))])
@pytest.mark.parametrize("eps", [0.0, -1e-8])
def test_modules_reject_eps_at_construction(cls, args, eps):
    with pytest.raises(ValueError, match=r"\beps\b"):
        cls(*args, eps=eps)


@pytest.mark.parametrize("impl,device", BACKENDS)
def test_tiny_positive_eps_with_zero_variance_is_finite(impl, device):
    """eps = 1e-12 and a constant group: 1/sqrt(eps) = 1e6, still finite to second order."""
    x = torch.full((3, C, 2, 2), 0.75, device=device)
    w, b = _params(device)
    _, call = NORM_OPS["batch_norm"]
    y, first, second = _to_second_order(call, x, w, b, impl, eps=1e-12)
    for t in [y] + first + [s for s in second if s is not None]:
        assert torch.isfinite(t).all()


# ----------------------------------------------------------------------------- penalties at zero norm


@pytest.mark.parametrize("impl,device", BACKENDS)
@pytest.mark.parametrize("mode,center,expected", [("two-sided", 1.0, 1.0), ("one-sided", 1.0, 0.0),
                                                   ("squared", 1.0, 0.0), ("two-sided", 0.0, 0.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_penalty_of_exactly_zero_gradients(impl, device, mode, center, expected, dtype):
    """Rows of exactly zero: value exact, derivative exactly 0 there (no NaN from d||g||/dg
    at 0), and rows that are not zero get ref's derivative."""
    grad = torch.zeros(3, 2, 3, 3, device=device, dtype=dtype)
    grad[1] = torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(4)).to(device=device, dtype=dtype)
    results = {}
    for which in (impl, "ref"):
        for rows in ("all", "mixed"):
            g = (grad * 0 if rows == "all" else grad).clone().requires_grad_(True)
            value = ops.penalty_from_grad(g, mode, center, impl=which)
            (dg,) = torch.autograd.grad(value, g)
            assert torch.isfinite(value) and torch.isfinite(dg).all(), (which, rows)
            assert (dg[0] == 0).all() and (dg[2] == 0).all(), (which, rows)
            results[which, rows] = (value, dg)
    assert results[impl, "all"][0].item() == expected
    assert_close(results[impl, "mixed"][0], results["ref", "mixed"][0], torch.float32, name="value")
    assert_close(results[impl, "mixed"][1], results["ref", "mixed"][1], dtype, name="dg")


def _critic_cases():
    """Every kind and norm on ref; on the fast backends one kind per reduction mode (interpreter cost)."""
    cases = [pytest.param("ref", "cpu", kind, norm, id=f"ref-{kind}-{norm}")
             for kind in KINDS for norm in ("group", "instance")]
    for p in all_backend_params():
        impl, device = p.values
        cases += [pytest.param(impl, device, kind, norm, id=f"{p.id}-{kind}-{norm}", marks=p.marks)
                  for kind, norm in (("wgan-gp", "group"), ("wgan-lp", "instance"), ("r1", "group"))]
    return cases


@pytest.mark.parametrize("impl,device,kind,norm", _critic_cases())
def test_fused_critic_with_exactly_zero_input_gradient(impl, device, kind, norm):
    """A critic of fastgan layers on a constant image: the norm maps it to its bias
    (zero), so the critic's input gradient is exactly zero.  The penalty is its
    closed form and the parameters' gradients (through the fused double
    backward at ||g|| = 0) are finite and equal to ref's."""
    def critic_for(which):
        torch.manual_seed(0)
        layer = (fnn.GroupNormAct(1, 2, impl=which) if norm == "group"
                 else fnn.InstanceNormAct2d(2, affine=True, impl=which)).to(device)
        return layer, (lambda x: (layer(x) ** 2).flatten(1).sum(1))

    real = torch.full((3, 2, 2, 2), 0.5, device=device)
    fake = torch.full((3, 2, 2, 2), -0.25, device=device)
    out = {}
    for which in (impl, "ref"):
        layer, critic = critic_for(which)
        value = gradient_penalty(critic, real, fake, kind, epsilon=0.5, impl=which,
                                 generator=torch.Generator(device=device).manual_seed(0))
        grads = torch.autograd.grad(value, list(layer.parameters()), allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, layer.parameters())]
        assert torch.isfinite(value) and all(torch.isfinite(g).all() for g in grads), which
        out[which] = (value.detach(), grads)
    expected = {"wgan-gp": 10.0, "dragan": 10.0, "wgan-lp": 0.0, "r1": 0.0, "r2": 0.0}[kind]
    assert float(out[impl][0]) == expected
    for a, e in zip(out[impl][1], out["ref"][1]):
        assert_close(a, e, torch.float32, name="parameter gradient")


@pytest.mark.parametrize("impl,device", BACKENDS)
def test_minibatch_features_of_identical_samples(impl, device):
    """Identical samples: every distance is 0, o = N (or N - 1), the derivative (sign(0) = 0) is 0."""
    m = torch.full((3, 2, 4), 0.3, device=device, requires_grad=True)
    for exclude_self, expected in ((False, 3.0), (True, 2.0)):
        o = ops.minibatch_discrimination(m, exclude_self, impl=impl)
        assert torch.equal(o.detach(), torch.full_like(o.detach(), expected))
        (dm,) = torch.autograd.grad(o, m, torch.ones_like(o))
        assert torch.equal(dm, torch.zeros_like(dm))
    x = torch.full((4, 3, 2, 2), 0.7, requires_grad=True)
    y = fnn.MinibatchStdDev()(x)
    (dx,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(y).all() and torch.isfinite(dx).all()
