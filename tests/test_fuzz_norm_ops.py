"""Property-based fuzzing of the normalization ops: batch / group / layer / instance norm,
pixel shuffle (+ batch norm) and virtual batch norm (property: ``_strategies.check_call``).

Each test draws a call -- shapes with N = 0 and size-1 dims, every dtype,
strided / channels-last / expanded inputs, requires_grad on any subset --
with at most one deliberate fault (a non-floating x, a parameter on another
device / of the wrong size / dtype / rank, an invalid eps, activation or
slope, ...) and checks it on ``ref`` and on each fast backend.
"""
import math

import pytest
import torch
from hypothesis import strategies as st

from fastgan import ops

from _fuzz_args import (activation_value, eps_value, fault_name, faults, kink_safe, make_x, vector, vector_fault,
                        x_description)
from _strategies import Spec, double_backward_flags, nc_shapes, run_fuzz
from conftest import all_backend_params

BACKENDS = [pytest.param("ref", "cpu", id="ref")] + all_backend_params()
COMMON_FAULTS = ("x_dtype", "eps", "activation", "negative_slope")


def _blame(fault, x_may_be_bad=False, *others):
    """Names an error may cite: the faulted argument (and x when its shape may be the problem)."""
    if fault is None:
        return None
    name = "x" if fault_name(fault) == "x_dtype" else fault_name(fault)
    return (name,) + (("x",) if x_may_be_bad else ()) + tuple(others)


def _vectors(draw, names, c, x_dtype, device, fault, positive=(), buffers=()):
    """Drawn per-channel vectors: each present or None (always present when faulted),
    maybe requiring grad (parameters only); buffers are float32."""
    pdtype = draw(st.sampled_from((torch.float32, x_dtype)))
    out = {}
    for i, name in enumerate(names):
        how = vector_fault(fault, name)
        if not (draw(st.booleans()) or how):
            out[name] = None
            continue
        grad = name not in buffers and draw(st.booleans())
        out[name] = (c, torch.float32 if name in buffers else pdtype, 1000 + i, device, name in positive, how, grad)
    return out


def _materialise(vecs):
    return {name: None if d is None else vector(*d[:4], positive=d[4], corruption=d[5], requires_grad=d[6])
            for name, d in vecs.items()}


def _leaves(x_leaf, made):
    return [x_leaf] + [t for t in made.values() if isinstance(t, torch.Tensor) and t.requires_grad]


def _count_per_channel(shape):
    return shape[0] * math.prod(shape[2:])


# ----------------------------------------------------------------------------- batch norm

BN_VECTORS = ("weight", "bias", "running_mean", "running_var")


@st.composite
def batch_norm_calls(draw, device):
    fault = draw(faults(COMMON_FAULTS + ("momentum", "x_rank"), BN_VECTORS))
    shapes = nc_shapes(0, 0).map(lambda s: s[:1]) if fault == "x_rank" else nc_shapes(0, 3)
    xd = draw(x_description(shapes, fault))
    c = xd[0][1] if len(xd[0]) > 1 else 1
    vecs = _vectors(draw, BN_VECTORS, c, xd[1], device, fault, positive=("running_var",),
                    buffers=("running_mean", "running_var"))
    stats_given = vecs["running_mean"] is not None and vecs["running_var"] is not None
    if not stats_given and not isinstance(fault, tuple):  # running stats come as a pair
        vecs["running_mean"] = vecs["running_var"] = None
    training = draw(st.booleans()) or not stats_given
    momentum = draw(st.sampled_from((1.5, -0.1, None) if fault == "momentum" else (0.1, 0.0, 1.0)))
    if fault == "momentum":
        training, vecs["running_mean"], vecs["running_var"] = True, BN_VECTORS, BN_VECTORS
        vecs = _vectors(draw, BN_VECTORS, c, xd[1], device, ("running_mean", "size"), positive=("running_var",),
                        buffers=("running_mean", "running_var"))
        vecs["running_mean"] = vecs["running_mean"][:5] + (None, False)
    eps = eps_value(draw, fault)
    act, slope = activation_value(draw, fault)
    vecs = kink_safe(vecs, act, c, device)
    double = draw(double_backward_flags())
    x_bad = fault == "x_rank" or (len(xd[0]) >= 2 and training and _count_per_channel(xd[0]) == 1)

    def build(impl):
        leaf, x = make_x(xd, device)
        made = _materialise(vecs)
        args = (x, made["running_mean"], made["running_var"], made["weight"], made["bias"], training, momentum,
                eps, act, slope)
        buffers = [t for t in (made["running_mean"], made["running_var"]) if isinstance(t, torch.Tensor)]
        return args, {}, _leaves(leaf, made), buffers

    names = ("x", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps",
             "activation", "negative_slope")
    blame = _blame(None if fault == "x_rank" else fault, x_bad, "running_var") if fault else (
        ("x",) if x_bad else None)
    return Spec(ops.batch_norm_act, build, names, xd[1], double=double, blame=blame)


@pytest.mark.parametrize("impl,device", BACKENDS)
def test_fuzz_batch_norm_act(impl, device):
    run_fuzz(batch_norm_calls, impl, device, ref_examples=30, fast_examples=10)


# ----------------------------------------------------------------------------- group / layer / instance norm


@st.composite
def group_norm_calls(draw, device):
    kind = draw(st.sampled_from(("group", "layer", "instance")))
    vec_names = ("weight", "bias") + (("running_mean", "running_var") if kind == "instance" else ())
    fault = draw(faults(COMMON_FAULTS + (("num_groups",) if kind == "group" else ()), vec_names))
    xd = draw(x_description(nc_shapes(1 if kind == "instance" else 0, 3), fault))
    c = xd[0][1]
    vecs = _vectors(draw, vec_names, c, xd[1], device, fault, positive=("running_var",),
                    buffers=("running_mean", "running_var"))
    if kind == "instance" and not isinstance(fault, tuple) and (vecs["running_mean"] is None
                                                                or vecs["running_var"] is None):
        vecs["running_mean"] = vecs["running_var"] = None
    valid_groups = [g for g in range(1, c + 1) if c % g == 0]
    groups = draw(st.sampled_from((0, c + 1, 1.0) if fault == "num_groups" else valid_groups))
    use_input_stats = draw(st.booleans()) or kind != "instance" or vecs.get("running_mean") is None
    eps = eps_value(draw, fault)
    act, slope = activation_value(draw, fault)
    vecs = kink_safe(vecs, act, c, device)
    double = draw(double_backward_flags())
    x_bad = kind == "instance" and use_input_stats and math.prod(xd[0][2:]) == 1 and xd[0][0] > 0

    def build(impl):
        leaf, x = make_x(xd, device)
        made = _materialise(vecs)
        if kind == "group":
            args = (x, groups, made["weight"], made["bias"], eps, act, slope)
        elif kind == "layer":
            args = (x, made["weight"], made["bias"], eps, act, slope)
        else:
            args = (x, made["running_mean"], made["running_var"], made["weight"], made["bias"], use_input_stats,
                    0.1, eps, act, slope)
        buffers = [made[k] for k in ("running_mean", "running_var") if isinstance(made.get(k), torch.Tensor)]
        return args, {}, _leaves(leaf, made), buffers

    fn = {"group": ops.group_norm_act, "layer": ops.layer_norm_act, "instance": ops.instance_norm_act}[kind]
    arg_names = ("x", "num_groups", "weight", "bias", "eps", "activation", "negative_slope", "running_mean",
                 "running_var", "use_input_stats", "momentum")
    blame = _blame(fault, x_bad, "running_var") if fault else (("x",) if x_bad else None)
    return Spec(fn, build, arg_names, xd[1], double=double, blame=blame)


@pytest.mark.parametrize("impl,device", BACKENDS)
def test_fuzz_group_layer_instance_norm_act(impl, device):
    run_fuzz(group_norm_calls, impl, device, ref_examples=30, fast_examples=10)


# ----------------------------------------------------------------------------- pixel shuffle


@st.composite
def pixel_shuffle_calls(draw, device):
    with_norm = draw(st.booleans())
    vec_names = ("bias",) + (("weight", "running_mean", "running_var") if with_norm else ())
    fault = draw(faults(("x_dtype", "activation", "negative_slope", "upscale_factor", "x_rank")
                        + (("eps",) if with_norm else ()), vec_names))
    r = draw(st.sampled_from((0, 3, 2.0) if fault == "upscale_factor" else (1, 2, 2)))
    out_c = draw(st.integers(1, 2))
    c = out_c * (r * r if isinstance(r, int) and r > 0 else 4)
    shapes = nc_shapes(1, 1, channels=c) if fault == "x_rank" else nc_shapes(2, 2, channels=c, max_size=2)
    xd = draw(x_description(shapes, fault))
    vecs = _vectors(draw, vec_names, out_c, xd[1], device, fault, positive=("running_var",),
                    buffers=("running_mean", "running_var"))
    if with_norm and not isinstance(fault, tuple) and (vecs["running_mean"] is None or vecs["running_var"] is None):
        vecs["running_mean"] = vecs["running_var"] = None
    training = draw(st.booleans()) or not with_norm or vecs["running_mean"] is None
    eps = eps_value(draw, fault)
    act, slope = activation_value(draw, fault)
    if with_norm:
        vecs = kink_safe(vecs, act, out_c, device)
    double = draw(double_backward_flags())
    shape = xd[0]
    x_bad = fault == "x_rank" or (with_norm and training and len(shape) == 4
                                  and shape[0] * shape[2] * shape[3] * max(r, 1) ** 2 == 1)

    def build(impl):
        leaf, x = make_x(xd, device)
        made = _materialise(vecs)
        if with_norm:
            args = (x, r, made["running_mean"], made["running_var"], made["weight"], made["bias"], training, 0.1,
                    eps, act, slope)
        else:
            args = (x, r, made["bias"], act, slope)
        buffers = [made[k] for k in ("running_mean", "running_var") if isinstance(made.get(k), torch.Tensor)]
        return args, {}, _leaves(leaf, made), buffers

    fn = ops.pixel_shuffle_batch_norm_act if with_norm else ops.pixel_shuffle_act
    arg_names = ("x", "upscale_factor", "bias", "weight", "running_mean", "running_var", "training", "eps",
                 "activation", "negative_slope")
    blame = _blame(None if fault == "x_rank" else fault, x_bad, "running_var") if fault else (
        ("x",) if x_bad else None)
    return Spec(fn, build, arg_names, xd[1], double=double, blame=blame)


@pytest.mark.parametrize("impl,device", BACKENDS)
def test_fuzz_pixel_shuffle_act(impl, device):
    run_fuzz(pixel_shuffle_calls, impl, device, ref_examples=25, fast_examples=6)


# ----------------------------------------------------------------------------- virtual batch norm


@st.composite
def virtual_batch_norm_calls(draw, device):
    fault = draw(faults(COMMON_FAULTS + ("ref_count",), ("weight", "bias", "ref_mean", "ref_sq_mean")))
    xd = draw(x_description(nc_shapes(0, 3), fault))
    c = xd[0][1]
    use_ref_stats_op = draw(st.booleans())
    ref_n = draw(st.integers(1, 3))
    vecs = _vectors(draw, ("weight", "bias"), c, xd[1], device, fault)
    ref_count = draw(st.sampled_from((0, True, 2.0) if fault == "ref_count" else (1, 4, 64)))
    reference_batch = draw(st.booleans())
    eps = eps_value(draw, fault)
    act, slope = activation_value(draw, fault)
    vecs = kink_safe(vecs, act, c, device)
    double = draw(double_backward_flags())
    ref_fault = vector_fault(fault, "ref_mean") or vector_fault(fault, "ref_sq_mean")

    def build(impl):
        leaf, x = make_x(xd, device)
        made = _materialise(vecs)
        leaves = _leaves(leaf, made)
        if use_ref_stats_op and x.is_floating_point():
            # the reference batch goes through the reference-statistics op of the same backend
            ref_desc = ((ref_n,) + xd[0][1:],) + xd[1:3] + (xd[3] + 1,) + xd[4:6] + (True,)
            ref_leaf, x_ref = make_x(ref_desc, device)
            mean, sq = ops.virtual_batch_reference_stats(x_ref, impl=impl)
            leaves.append(ref_leaf)
        else:
            mean = vector(c, torch.float32, 5, device, requires_grad=True)
            sq = (mean.detach() ** 2 + vector(c, torch.float32, 6, device, positive=True)).requires_grad_(True)
            leaves += [mean, sq]
        if ref_fault:
            bad = vector(c, torch.float32, 7, device, corruption=ref_fault)
            mean, sq = (bad, sq) if fault[0] == "ref_mean" else (mean, bad)
        args = (x, mean, sq, ref_count, made["weight"], made["bias"], eps, act, slope)
        return args, {"reference_batch": reference_batch}, leaves, []

    arg_names = ("x", "ref_mean", "ref_sq_mean", "ref_count", "weight", "bias", "eps", "activation",
                 "negative_slope")
    return Spec(ops.virtual_batch_norm, build, arg_names, xd[1], double=double, blame=_blame(fault))


@pytest.mark.parametrize("impl,device", BACKENDS)
def test_fuzz_virtual_batch_norm(impl, device):
    run_fuzz(virtual_batch_norm_calls, impl, device, ref_examples=25, fast_examples=8)


@st.composite
def reference_stats_calls(draw, device):
    fault = draw(faults(("x_dtype",)))
    xd = draw(x_description(nc_shapes(0, 3), fault))

    def build(impl):
        leaf, x = make_x(xd, device)
        return (x,), {}, [leaf], []

    blame = ("x_ref",) if fault or xd[0][0] == 0 else None
    return Spec(ops.virtual_batch_reference_stats, build, ("x_ref",), xd[1], double=draw(double_backward_flags()),
                blame=blame)


@pytest.mark.parametrize("impl,device", BACKENDS)
def test_fuzz_virtual_batch_reference_stats(impl, device):
    run_fuzz(reference_stats_calls, impl, device, ref_examples=15, fast_examples=4)
