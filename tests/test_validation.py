"""The norm layers' one-pass argument check (``usual_norm_arguments``) against their detailed checks.

Every fused norm layer's forward first asks whether its arguments are the usual valid ones, in one pass, and
only otherwise runs the detailed checks that name the argument.  The shortcut must never accept what the
detailed checks refuse (that would be bad input let through silently): random argument sets, valid and
invalid, hold the two together.
"""
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastgan.ops  # noqa: F401  (fastgan.ops.batch_norm_act is the function; the modules are these)
from fastgan import _validation

bn_module = sys.modules["fastgan.ops.batch_norm_act"]
gn_module = sys.modules["fastgan.ops.group_norm_act"]

C = 3
# Each argument usually valid, sometimes not in one way or another: mostly-valid sets are where the shortcut
# answers, so they must be common; the invalid values cover every detailed check.
X_SHAPES = [(4, C, 2, 2)] * 4 + [(4, C), (1, C, 1, 1), (1, C), (2, C, 5), (C,), (4, 0, 2, 2), (0, C, 2, 2), (2, 4, 2)]
DTYPES = [torch.float32] * 4 + [torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.bool]
DEVICES = ["cpu"] * 6 + ["meta"]


def _tensor(shape, dtype, device):
    return torch.zeros(shape, dtype=dtype, device=device)


def _often(value, *others, weight=4):
    return st.sampled_from([value] * weight + list(others))


xs = st.one_of(*[st.builds(_tensor, st.sampled_from(X_SHAPES), st.sampled_from(DTYPES),
                           st.sampled_from(DEVICES))] * 6, st.just([1.0, 2.0]), st.just(None))
vectors = st.one_of(st.none(), *[st.builds(_tensor, _often((C,), (C + 1,), (1, C), (0,), ()),
                                           st.sampled_from(DTYPES), st.sampled_from(DEVICES))] * 4,
                    st.just([0.0] * C), st.builds(lambda: torch.nn.Parameter(torch.ones(C))))
floats = _often(0.1, 1e-5, 0.0, 1.0, -1.0, 1.5, float("nan"), float("inf"), True, False, 1, 0, "x", None, weight=8)


def _passes(check, *args, **kwargs) -> bool:
    try:
        check(*args, **kwargs)
    except (TypeError, ValueError):
        return False
    return True


def _detailed(module, fn, *args, **kwargs) -> bool:
    """``fn`` with the one-pass check switched off: the detailed checks alone."""
    saved = module.usual_norm_arguments
    module.usual_norm_arguments = lambda *a, **k: False
    try:
        return _passes(fn, *args, **kwargs)
    finally:
        module.usual_norm_arguments = saved


@settings(max_examples=2000, deadline=None)
@given(x=xs, rm=vectors, rv=vectors, w=vectors, b=vectors, training=st.booleans(), momentum=floats, eps=floats,
       local_batch=st.booleans())
def test_batch_norm_shortcut_accepts_only_what_the_detailed_checks_accept(x, rm, rv, w, b, training, momentum,
                                                                           eps, local_batch):
    args = (x, rm, rv, w, b, training, momentum, eps)
    fast = _passes(bn_module.check_arguments, *args, local_batch=local_batch)
    detailed = _detailed(bn_module, bn_module.check_arguments, *args, local_batch=local_batch)
    assert fast == detailed  # the shortcut only returns early where the detailed checks pass


@settings(max_examples=400, deadline=None)
@given(x=xs, w=vectors, b=vectors, eps=floats, min_dim=st.sampled_from([2, 3]))
def test_group_norm_shortcut_accepts_only_what_the_detailed_checks_accept(x, w, b, eps, min_dim):
    fast = _passes(gn_module._check_common, x, w, b, eps, min_dim)
    assert fast == _detailed(gn_module, gn_module._check_common, x, w, b, eps, min_dim)


def test_the_shortcut_takes_the_usual_calls():
    """(Else it saves nothing.)"""
    x = torch.zeros(4, C, 2, 2)
    v = torch.nn.Parameter(torch.ones(C))
    assert _validation.usual_norm_arguments(x, (torch.zeros(C), torch.ones(C), v, v), 1e-5)
    assert _validation.usual_norm_arguments(x.to(memory_format=torch.channels_last).bfloat16(), (None, v), 1e-5)
    assert not _validation.usual_norm_arguments(x, (torch.zeros(C + 1),), 1e-5)
    assert not _validation.usual_norm_arguments(x, (), 1)  # an int eps: the detailed checks take it


@pytest.mark.parametrize("bad, message", [
    (dict(weight=torch.ones(C + 1)), "weight must have 3 elements"),
    (dict(eps=0.0), "eps must be > 0"),
    (dict(momentum=1.5), "momentum must be in"),
    (dict(running_var=None), "must be given together"),
])
def test_bad_arguments_still_get_their_named_errors(bad, message):
    kw = dict(running_mean=torch.zeros(C), running_var=torch.ones(C), weight=torch.ones(C), bias=torch.zeros(C),
              training=True, momentum=0.1, eps=1e-5)
    kw.update(bad)
    with pytest.raises(ValueError, match=message):
        bn_module.batch_norm_act(torch.randn(4, C, 2, 2), **kw)
