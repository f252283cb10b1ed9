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
ps_module = sys.modules["fastgan.ops.pixel_shuffle_act"]

C = 3
# Each argument usually valid, sometimes not in one way or another: mostly-valid sets are where the shortcut
# answers, so they must be common; the invalid values cover every detailed check.
X_SHAPES = [(4, C, 2, 2)] * 10 + [(4, C), (1, C, 1, 1), (1, C), (2, C, 5), (C,), (4, 0, 2, 2), (0, C, 2, 2), (2, 4, 2)]
DTYPES = [torch.float32] * 10 + [torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.bool]
DEVICES = ["cpu"] * 12 + ["meta"]


def _tensor(shape, dtype, device):
    return torch.zeros(shape, dtype=dtype, device=device)


def _often(value, *others, weight=4):
    return st.sampled_from([value] * weight + list(others))


xs = st.one_of(*[st.builds(_tensor, st.sampled_from(X_SHAPES), st.sampled_from(DTYPES),
                           st.sampled_from(DEVICES))] * 6, st.just([1.0, 2.0]), st.just(None))
vectors = st.one_of(st.none(), *[st.builds(_tensor, _often((C,), (C + 1,), (1, C), (0,), (), weight=12),
                                           st.sampled_from(DTYPES), st.sampled_from(DEVICES))] * 8,
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


@settings(max_examples=400, deadline=None)
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


# pixel shuffle + batch norm: x has r^2 channels per output channel, the vectors one entry per output channel
PS_X_SHAPES = [(4, 4 * C, 2, 2)] * 10 + [(1, 4 * C, 1, 1), (1, C, 1, 1), (4, C, 2, 2), (4, 4 * C, 2), (4, 4 * C),
                                          (4, 2 * C, 2, 2), (0, 4 * C, 2, 2), (4, 0, 2, 2)]
ps_xs = st.one_of(*[st.builds(_tensor, st.sampled_from(PS_X_SHAPES), st.sampled_from(DTYPES),
                              st.sampled_from(DEVICES))] * 6, st.just([1.0, 2.0]), st.just(None))
upscales = _often(2, 1, 0, -1, 3, True, 2.0, None, "2", weight=8)


@settings(max_examples=400, deadline=None)
@given(x=ps_xs, r=upscales, rm=vectors, rv=vectors, w=vectors, b=vectors, training=st.booleans(), momentum=floats,
       eps=floats)
def test_pixel_shuffle_batch_norm_shortcut_accepts_only_what_the_detailed_checks_accept(x, r, rm, rv, w, b, training,
                                                                                         momentum, eps):
    args = (x, r, rm, rv, w, b, training, momentum, eps)
    fast = _passes(ps_module.check_batch_norm_arguments, *args)
    assert fast == _detailed(ps_module, ps_module.check_batch_norm_arguments, *args)


def test_every_single_bad_argument_falls_through_to_the_detailed_checks():
    """Systematically: from valid calls (training or not, with or without running stats, local batch or not),
    each argument in turn replaced by every value of its pool, valid or not."""
    x_pool = [_tensor(shape, dtype, device) for shape in dict.fromkeys(X_SHAPES) for dtype in dict.fromkeys(DTYPES)
              for device in ("cpu", "meta")] + [[1.0, 2.0], None, torch.zeros(4, C, 2, 2).to(
                  memory_format=torch.channels_last)]
    v_pool = [None, [0.0] * C, torch.nn.Parameter(torch.ones(C))] + [
        _tensor(shape, dtype, device) for shape in ((C,), (C + 1,), (1, C), (0,), ())
        for dtype in dict.fromkeys(DTYPES) for device in ("cpu", "meta")]
    f_pool = [1e-5, 0.1, 0.0, 1.0, -1.0, 1.5, float("nan"), float("inf"), True, False, 1, 0, "x", None]
    pools = dict(x=x_pool, rm=v_pool, rv=v_pool, w=v_pool, b=v_pool, training=[True, False], momentum=f_pool,
                 eps=f_pool, local_batch=[True, False])
    checked = taken = 0
    for training in (True, False):
        for running in (True, False):
            for local_batch in (True, False):
                base = dict(x=torch.zeros(4, C, 2, 2), rm=torch.zeros(C) if running else None,
                            rv=torch.ones(C) if running else None, w=torch.ones(C), b=torch.zeros(C),
                            training=training, momentum=0.1, eps=1e-5, local_batch=local_batch)
                for key, pool in pools.items():
                    for value in pool:
                        a = dict(base, **{key: value})
                        args = (a["x"], a["rm"], a["rv"], a["w"], a["b"], a["training"], a["momentum"], a["eps"])
                        fast = _passes(bn_module.check_arguments, *args, local_batch=a["local_batch"])
                        assert fast == _detailed(bn_module, bn_module.check_arguments, *args,
                                                 local_batch=a["local_batch"]), (key, value, base)
                        checked += 1
                        taken += fast
                for key, pool in (("x", x_pool), ("w", v_pool), ("b", v_pool), ("eps", f_pool)):
                    for value in pool:
                        a = dict(base, **{key: value})
                        fast = _passes(gn_module._check_common, a["x"], a["w"], a["b"], a["eps"])
                        assert fast == _detailed(gn_module, gn_module._check_common, a["x"], a["w"], a["b"],
                                                 a["eps"]), (key, value)
    assert checked > 1000 and taken > 100  # (valid variants are many: the shortcut was tested, not skipped)


def test_the_shortcut_takes_the_usual_calls():
    """(Else it saves nothing.)"""
    x = torch.zeros(4, C, 2, 2)
    v = torch.nn.Parameter(torch.ones(C))
    assert _validation.usual_norm_arguments(x, (torch.zeros(C), torch.ones(C), v, v), 1e-5)
    assert _validation.usual_norm_arguments(x.to(memory_format=torch.channels_last).bfloat16(), (None, v), 1e-5)
    assert not _validation.usual_norm_arguments(x, (torch.zeros(C + 1),), 1e-5)
    assert not _validation.usual_norm_arguments(x, (), 1)  # an int eps: the detailed checks take it
    # pixel shuffle + batch norm: vectors per output channel
    x4 = torch.zeros(4, 4 * C, 2, 2)
    assert _validation.usual_norm_arguments(x4, (torch.zeros(C), v), 1e-5, channels=C)
    assert not _validation.usual_norm_arguments(x4, (torch.zeros(4 * C),), 1e-5, channels=C)
    calls = []
    saved = ps_module._check
    ps_module._check = lambda *a: calls.append(a) or saved(*a)
    try:
        assert ps_module.check_batch_norm_arguments(x4, 2, torch.zeros(C), torch.ones(C), v, v, True, 0.1, 1e-5) == C
        assert calls == []  # the usual call never reached the detailed checks
        assert ps_module.check_batch_norm_arguments(x4, 2, None, None, None, None, True, 0.1, 1) == C
        assert len(calls) == 1  # an int eps: the detailed checks take it
    finally:
        ps_module._check = saved


@pytest.mark.parametrize("bad, message", [
    (dict(weight=torch.ones(C + 1)), "weight must have 3 elements"),
    (dict(eps=0.0), "eps must be > 0"),
    (dict(momentum=1.5), "momentum must be in"),
    (dict(running_var=None), "must be given together"),
    # (F.batch_norm refuses them too; the fast backends would silently drop their gradient)
    (dict(running_mean=torch.zeros(C, requires_grad=True)), "running_mean must not require grad"),
    (dict(running_var=torch.ones(C, requires_grad=True), training=False), "running_var must not require grad"),
])
@pytest.mark.parametrize("impl", ["ref", "auto"])
def test_bad_arguments_still_get_their_named_errors(bad, message, impl):
    kw = dict(running_mean=torch.zeros(C), running_var=torch.ones(C), weight=torch.ones(C), bias=torch.zeros(C),
              training=True, momentum=0.1, eps=1e-5, impl=impl)
    kw.update(bad)
    with pytest.raises(ValueError, match=message):
        bn_module.batch_norm_act(torch.randn(4, C, 2, 2), **kw)
