"""Drawn argument sets shared by the fuzz tests: per-channel vectors, scalars, corruptions.

Every builder draws *descriptions* (sizes, dtypes, seeds, flags) with
hypothesis and returns a function that materialises fresh tensors from them,
so the ref and the fast backend see identical inputs.
"""
from __future__ import annotations

from typing import Optional

import torch
from hypothesis import strategies as st

from _strategies import LAYOUTS, VALID_DTYPES, random_values, with_layout

BAD_DTYPES = (torch.int32, torch.int64, torch.bool, torch.complex64)

ACTIVATIONS = ("leaky_relu", "relu", "identity")


def other_device(device: str = "cpu") -> str:
    """A device other than ``device`` for mixed-device calls: cpu for CUDA inputs; for
    CPU inputs cuda when present, else meta (always there)."""
    if device != "cpu":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "meta"


# How a per-channel vector can be wrong.  Each must give a ValueError / TypeError naming it.
VECTOR_CORRUPTIONS = ("size", "int_dtype", "device", "rank", "not_tensor")


def vector(c: int, dtype: torch.dtype, seed: int, device: str, *, positive: bool = False,
           corruption: Optional[str] = None, requires_grad: bool = False):
    """A (C,) float vector, or one broken as ``corruption`` says."""
    if corruption == "not_tensor":
        return [1.0] * c
    n = c + 1 if corruption == "size" else c
    v = random_values((n,), torch.float64, seed, scale=0.5)
    # never 0: a zero bias puts a constant group exactly at the activation's kink (see kink_safe)
    v = (v.abs() + 0.5) if positive else torch.where(v >= 0, v + 0.25, v - 0.25)
    if corruption == "int_dtype":
        return v.round().to(torch.int64).to(device)
    v = v.to(dtype)
    if corruption == "rank":
        v = v.unsqueeze(0)
    dev = other_device(device) if corruption == "device" else device
    v = v.to(dev)
    return v.requires_grad_(requires_grad) if requires_grad and v.is_floating_point() else v


def kink_safe(vecs: dict, activation, c: int, device: str) -> dict:
    """With a kinked activation (relu / leaky_relu) a norm op gets a (nonzero) bias.

    A constant statistics group (or an element equal to its mean -- likely
    with grid values) normalises to xhat = 0, so z = bias.  Without a bias
    z = 0 sits exactly on the kink: ref computes (x - mean) * r = 0 exactly,
    but GPU kernels compute fma(x, scale, shift), whose rounding leaves z =
    +-tiny, and act'(z) is 1 or the slope by chance -- a tie, not a bug.
    A nonzero bias moves z off the kink.  (Calls without bias keep their
    coverage with the identity activation.)"""
    if activation in ("relu", "leaky_relu") and vecs.get("bias") is None:
        vecs = dict(vecs, bias=(c, torch.float32, 1001, device, False, None, False))
    return vecs


def faults(scalar_names=(), vector_names=()) -> st.SearchStrategy:
    """At most one deliberate fault per call (None 60 % of the time): the name of the
    broken argument, or (vector name, how it is broken) for a per-channel vector."""
    options = [st.sampled_from(tuple(scalar_names))] if scalar_names else []
    if vector_names:
        options.append(st.tuples(st.sampled_from(tuple(vector_names)), st.sampled_from(VECTOR_CORRUPTIONS)))
    if not options:
        return st.none()
    return st.one_of(st.none(), st.none(), st.none(), *options) if len(options) == 2 else \
        st.one_of(st.none(), st.none(), st.none(), st.none(), st.none(), st.none(), options[0], options[0])


def fault_name(fault):
    return fault[0] if isinstance(fault, tuple) else fault


def vector_fault(fault, name):
    """How vector ``name`` is broken under ``fault`` (None: it is fine)."""
    return fault[1] if isinstance(fault, tuple) and fault[0] == name else None


@st.composite
def x_description(draw, shapes, fault=None, layout_strategy=None):
    """(shape, dtype, layout, seed, scale, offset, requires_grad) of the main input x;
    fault "x_dtype" draws a non-floating (or complex) dtype."""
    shape = draw(shapes)
    if fault == "x_dtype":
        dtype = draw(st.sampled_from(BAD_DTYPES))
    else:
        dtype = draw(st.sampled_from(VALID_DTYPES + VALID_DTYPES + (torch.float64,)))
    layout = draw(layout_strategy if layout_strategy is not None else st.sampled_from(LAYOUTS))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from((1.0, 0.25, 3.0)))
    offset = draw(st.sampled_from((0.0, 0.5, -2.0)))
    requires_grad = draw(st.booleans()) and dtype.is_floating_point
    return shape, dtype, layout, seed, scale, offset, requires_grad


def make_x(desc, device: str):
    """(leaf, strided view of it) for a description from ``x_description``."""
    shape, dtype, layout, seed, scale, offset, requires_grad = desc
    leaf = random_values(shape, dtype, seed, scale, offset).to(device)
    if requires_grad:
        leaf.requires_grad_(True)
    return leaf, with_layout(leaf, layout)


def eps_value(draw, fault):
    """A valid eps, or (fault "eps") 0, negative, a bool or a string."""
    bad = fault == "eps"
    return draw(st.sampled_from((0.0, -1e-5, float("nan"), True, "1e-5") if bad else (1e-5, 1e-3, 0.1)))


def activation_value(draw, fault):
    act = "tanh" if fault == "activation" else draw(st.sampled_from(ACTIVATIONS))
    slope = (draw(st.sampled_from(("0.2", float("inf"), float("nan")))) if fault == "negative_slope"
             else draw(st.sampled_from((0.2, 0.01, 1.0, 0.0))))
    return act, slope
