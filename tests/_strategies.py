"""Shared hypothesis strategies and the fuzz property for fastgan's ops and modules.

The property (``check_call``): a call on a fast backend either

* matches the same call on ``impl="ref"`` -- output shape, dtype and values
  (contract tolerances), in-place buffer updates, first derivatives of every
  input that requires grad and, when asked, second derivatives -- with every
  result finite when the inputs are; or
* raises ``ValueError`` / ``TypeError`` whose message names one of the
  call's arguments, exactly when ``ref`` raises the same type.

Anything else (another exception type, a crash, NaN / Inf from finite input,
a wrong shape) fails.  Tensor values come from ``torch.randn`` seeded by a
drawn integer, so ties at an activation's kink have probability zero and a
failing example is reproducible from its seed.

Settings: few examples, small shapes (the Triton interpreter costs ~ms per
program), ``derandomize=True`` and no example database so that CI runs the
same examples every time.
"""
from __future__ import annotations

import collections
import os
import re
from typing import Callable, Optional, Sequence

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from _tolerances import TOL

VALID_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # the contract's; float64 is accepted too
LAYOUTS = ("contiguous", "channels_last", "sliced", "transposed", "expanded", "size1_strides")
ALLOWED_ERRORS = (ValueError, TypeError)


def fuzz_settings(max_examples: int) -> settings:
    """Deterministic, database-less settings (CI runs the same examples every time)."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def run_fuzz(calls: Callable, impl: str, device: str, ref_examples: int, fast_examples: int) -> None:
    """Check ``fuzz_settings`` examples of the drawn calls ``calls(device)`` on ``impl``.

    The Triton interpreter costs seconds per example to second order, so
    fast backends get fewer examples than ``ref`` (whose run checks the
    validation and the ground truth itself on many more draws)."""
    n = ref_examples if impl == "ref" else fast_examples
    outcomes = []

    @fuzz_settings(n)
    @given(data=st.data())
    def property_holds(data):
        outcomes.append(check_call(data.draw(calls(device)), impl))

    property_holds()
    if os.environ.get("FASTGAN_FUZZ_STATS"):  # how the drawn calls came out (pytest -s)
        print(f"\n{calls.__name__}[{impl}]: {dict(collections.Counter(outcomes))}")
    # the draws must not degenerate into rejected calls only: most examples must compare values
    compared = sum(o.startswith("ok") for o in outcomes)
    assert compared >= max(1, len(outcomes) // 3), f"only {compared} of {len(outcomes)} drawn calls were valid"


def double_backward_flags() -> st.SearchStrategy:
    """Second derivatives in about one draw of three (they cost the most)."""
    return st.sampled_from((False, False, True))


# ----------------------------------------------------------------------------- strategies


def sizes(max_size: int = 3, allow_zero: bool = True) -> st.SearchStrategy:
    """A dimension size: 1 and (optionally) 0 are drawn often on purpose."""
    return st.integers(0 if allow_zero else 1, max_size)


@st.composite
def nc_shapes(draw, min_spatial: int = 0, max_spatial: int = 2, max_n: int = 3, max_c: int = 4,
              max_size: int = 3, channels: Optional[int] = None) -> tuple:
    """(N, C, *spatial): N = 0 in about 1 draw of 8, N = 1 and size-1 dims often."""
    n = draw(st.sampled_from(tuple(range(2, max_n + 1)) * 3 + (1, 1, 0)))
    c = channels if channels is not None else draw(st.integers(1, max_c))
    rank = draw(st.integers(min_spatial, max_spatial))
    cap = max_size if rank < 3 else 2  # 5-D inputs (channels_last_3d) stay small
    spatial = tuple(draw(st.sampled_from(tuple(range(2, cap + 1)) * 2 + (1,))) for _ in range(rank))
    return (n, c) + spatial


def layouts() -> st.SearchStrategy:
    return st.sampled_from(LAYOUTS)


def seeds() -> st.SearchStrategy:
    return st.integers(0, 2**31 - 1)


# ----------------------------------------------------------------------------- tensors


def random_values(shape: Sequence[int], dtype: torch.dtype, seed: int, scale: float = 1.0,
                  offset: float = 0.0) -> torch.Tensor:
    """Values from a seeded generator, cast to ``dtype`` (integers: small ints, bool: coin flips).

    Floating values lie on the grid k / 16 (exact in every dtype here): sums
    of a few of them are exact, so a constant (or an expanded, identical)
    statistics group has exactly zero variance and exactly its value as mean
    in every backend, instead of a rounding error that 1 / sqrt(eps) blows
    up; such degenerate groups are what the fuzzing is after."""
    g = torch.Generator().manual_seed(seed)
    base = torch.round(torch.randn(tuple(shape), generator=g, dtype=torch.float64) * scale * 16) / 16 + offset
    if dtype == torch.bool:
        return base > 0
    if dtype.is_complex:
        return base.to(dtype)
    if not dtype.is_floating_point:
        return base.round().to(dtype)
    return base.to(dtype)


def with_layout(t: torch.Tensor, layout: str, seed: int = 0) -> torch.Tensor:
    """A tensor holding t's values (``expanded``: t's first sample repeated) in ``layout``.

    Differentiable in t, so a gradient w.r.t. the leaf t checks the backward
    through the strided input too."""
    if layout == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "channels_last" and t.dim() == 5:
        return t.contiguous(memory_format=torch.channels_last_3d)
    if layout == "sliced" and t.dim() >= 1:
        # every other element of a twice-as-long last dim (stride 2)
        big = torch.stack([t, torch.zeros_like(t)], dim=-1).flatten(-2)
        return big[..., ::2]
    if layout == "transposed" and t.dim() >= 2:
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    if layout == "expanded" and t.dim() >= 1:
        return t[:1].expand_as(t)  # stride 0 on the batch dim (N = 0 gives an empty view)
    if layout == "size1_strides":
        # contiguous, but every size-1 dim carries an arbitrary stride (PyTorch ignores them)
        c = t.contiguous()
        strides = [s if n != 1 else 7 + 3 * i for i, (n, s) in enumerate(zip(c.shape, c.stride()))]
        return c.as_strided(c.shape, strides) if c.numel() else c
    return t.contiguous()


# ----------------------------------------------------------------------------- the property


class Spec:
    """One call to compare across backends.

    ``build(impl)`` returns (args, kwargs, grad_leaves, buffers): fresh
    tensors on every call (the same values each time), the leaves whose
    gradients are compared, and tensors the call updates in place (running
    statistics) that must end up equal.  ``blame``: the names of the
    arguments the draw broke on purpose; an error must name one of them
    (any argument of the call when empty)."""

    def __init__(self, fn: Callable, build: Callable, arg_names: Sequence[str], dtype: Optional[torch.dtype],
                 double: bool = False, blame=None, finite_inputs: bool = True):
        self.fn, self.build, self.arg_names = fn, build, tuple(arg_names)
        self.dtype, self.double, self.blame, self.finite_inputs = dtype, double, blame, finite_inputs


def _run(spec: Spec, impl: str):
    args, kwargs, leaves, buffers = spec.build(impl)
    try:
        out = spec.fn(*args, impl=impl, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the property is about which exceptions
        return exc, None, None, None, None
    outs = out if isinstance(out, (tuple, list)) else (out,)
    grads = second = None
    diff_outs = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
    want = [t for t in leaves if t is not None and t.requires_grad]
    if want and diff_outs:
        gys = [random_values(o.shape, torch.float64, 99 + i).to(device=o.device, dtype=o.dtype)
               for i, o in enumerate(diff_outs)]
        grads = torch.autograd.grad(diff_outs, want, gys, create_graph=spec.double, allow_unused=True)
        if spec.double:
            # a gradient-penalty-like scalar of the first derivatives
            terms = [(g.float() * random_values(g.shape, torch.float64, 7 + i).to(g.device).float()).sum()
                     + 0.5 * (g.float() ** 2).sum()
                     for i, g in enumerate(grads) if g is not None and g.requires_grad]
            if terms:
                second = torch.autograd.grad(sum(terms), want, allow_unused=True)
    return None, outs, grads, second, buffers


def _names_an_argument(message: str, names: Sequence[str]) -> bool:
    return any(re.search(rf"\b{re.escape(n)}\b", message) for n in names)


def _check_error(exc: BaseException, spec: Spec, impl: str) -> None:
    assert isinstance(exc, ALLOWED_ERRORS), (
        f"impl={impl}: {type(exc).__name__} is not ValueError/TypeError: {exc}")
    msg = str(exc)
    # blame: the arguments the draw broke on purpose (the message must name one of them)
    names = tuple(spec.blame) if spec.blame else spec.arg_names
    assert _names_an_argument(msg, names), f"impl={impl}: the message names none of {names}: {msg!r}"


def _tol(dtype: torch.dtype):
    return TOL.get(dtype, TOL[torch.float32])


def assert_matches(actual: Optional[torch.Tensor], expected: Optional[torch.Tensor], dtype, what: str,
                   scale: float = 1.0, finite: bool = True) -> None:
    """Same shape and dtype, finite, and close at the contract tolerance of ``dtype``.

    The absolute tolerance is relative to the largest reference magnitude
    (at least 1): derivatives are sums over a statistics group, so their
    rounding error grows with their size."""
    if actual is None or expected is None:
        other = expected if actual is None else actual
        assert other is None or not other.abs().gt(0).any(), f"{what}: one backend gave None, the other {other}"
        return
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != ref {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != ref {expected.dtype}"
    if not (actual.is_floating_point() or actual.is_complex()):
        assert torch.equal(actual, expected), what
        return
    if finite:
        assert torch.isfinite(expected).all(), f"{what}: ref gives non-finite values from finite input"
        assert torch.isfinite(actual).all(), f"{what}: non-finite values from finite input"
    atol, rtol = _tol(dtype)
    mag = max(1.0, expected.detach().abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual.detach().double(), expected.detach().double(), atol=atol * scale * mag,
                               rtol=rtol * scale, equal_nan=not finite, msg=lambda m: f"{what}: {m}")


def check_call(spec: Spec, impl: str) -> str:
    """The fuzz property for one drawn call on backend ``impl``; returns "error" or "ok: <what was compared>"."""
    ref = _run(spec, "ref")
    fast = _run(spec, impl) if impl != "ref" else ref
    if ref[0] is not None:
        _check_error(ref[0], spec, "ref")
        assert fast[0] is not None, f"impl={impl} accepted a call that ref rejects with {ref[0]!r}"
        _check_error(fast[0], spec, impl)
        assert type(fast[0]) is type(ref[0]), f"impl={impl} raised {fast[0]!r}, ref {ref[0]!r}"
        event(f"rejected: {type(ref[0]).__name__}")
        return "error"
    if fast[0] is not None:
        raise AssertionError(f"impl={impl} raised {type(fast[0]).__name__}: {fast[0]} but ref succeeds") from fast[0]
    outs = ref[1]
    empty = all(o.numel() == 0 for o in outs if isinstance(o, torch.Tensor))
    kind = "empty" if empty else ("second order" if ref[3] is not None else
                                  "first order" if ref[2] is not None else "forward")
    event(f"compared: {kind}")
    dtype = spec.dtype if spec.dtype in TOL else torch.float32
    half = dtype in (torch.float16, torch.bfloat16)
    finite = spec.finite_inputs
    _, outs_r, grads_r, second_r, bufs_r = ref
    _, outs_f, grads_f, second_f, bufs_f = fast
    assert len(outs_f) == len(outs_r)
    for i, (a, e) in enumerate(zip(outs_f, outs_r)):
        if isinstance(e, torch.Tensor):
            assert_matches(a, e, dtype, f"output[{i}]", finite=finite)
    for i, (a, e) in enumerate(zip(bufs_f, bufs_r)):
        assert_matches(a, e, torch.float32 if not half else dtype, f"buffer[{i}]", finite=finite)
    if grads_r is not None:
        for i, (a, e) in enumerate(zip(grads_f, grads_r)):
            assert_matches(a, e, dtype, f"grad[{i}]", scale=2.0 if half else 1.0, finite=finite)
    if second_r is not None:
        for i, (a, e) in enumerate(zip(second_f, second_r)):
            assert_matches(a, e, dtype, f"second[{i}]", scale=8.0 if half else 4.0, finite=finite)
    return f"ok: {kind}"
