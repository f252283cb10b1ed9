"""Property-based fuzzing of minibatch discrimination, the penalty ops
(``interpolate``, ``penalty_from_grad``) and ``fastgan.penalties.gradient_penalty``
(property: ``_strategies.check_call``; draws as in ``test_fuzz_norm_ops.py``)."""
import pytest
import torch
from hypothesis import strategies as st

from fastgan import ops
from fastgan.nn import GroupNormAct
from fastgan.penalties import KINDS, gradient_penalty

from _fuzz_args import other_device, x_description, make_x, faults, fault_name
from _strategies import Spec, double_backward_flags, random_values, run_fuzz, sizes, with_layout
from conftest import all_backend_params

BACKENDS = [pytest.param("ref", "cpu", id="ref")] + all_backend_params()


def _shape(draw, rank_min=1, rank_max=4):
    """(N, *rest): N in 0..3 (0 and 1 often), the rest 1..3."""
    n = draw(st.sampled_from((2, 3, 2, 3, 1, 0)))
    rank = draw(st.integers(rank_min, rank_max))
    return (n,) + tuple(draw(sizes(3, allow_zero=False)) for _ in range(rank - 1))


# ----------------------------------------------------------------------------- minibatch discrimination


@st.composite
def minibatch_discrimination_calls(draw, device):
    fault = draw(faults(("x_dtype", "m_rank", "exclude_self")))
    shape = (draw(st.sampled_from((2, 3, 4, 2, 3, 1, 0))), draw(st.integers(1, 3)),
             draw(st.sampled_from((1, 2, 3, 2, 3, 0))))
    if fault == "m_rank":
        shape = shape[:draw(st.sampled_from((1, 2)))] if draw(st.booleans()) else shape + (2,)
    xd = draw(x_description(st.just(shape), fault))
    exclude_self = draw(st.sampled_from((1, "yes") if fault == "exclude_self" else (False, True)))
    double = draw(double_backward_flags())

    def build(impl):
        leaf, m = make_x(xd, device)
        return (m, exclude_self), {}, [leaf], []

    blame = None if fault is None else ("exclude_self",) if fault == "exclude_self" else ("m",)
    return Spec(ops.minibatch_discrimination, build, ("m", "exclude_self"), xd[1], double=double, blame=blame)


@pytest.mark.parametrize("impl,device", BACKENDS)
def test_fuzz_minibatch_discrimination(impl, device):
    run_fuzz(minibatch_discrimination_calls, impl, device, ref_examples=30, fast_examples=10)


def test_fuzz_minibatch_discrimination_lean_cpu_path():
    """``impl="auto"`` on CPU runs the memory-lean path: fuzz it against ref too."""
    run_fuzz(minibatch_discrimination_calls, "auto", "cpu", ref_examples=0, fast_examples=15)


# ----------------------------------------------------------------------------- interpolate


@st.composite
def interpolate_calls(draw, device):
    fault = draw(faults(("x_dtype", "fake", "epsilon")))
    xd = draw(x_description(st.just(_shape(draw)), fault))
    shape, dtype = xd[0], xd[1]
    fake_layout = draw(st.sampled_from(("contiguous", "transposed", "channels_last", "expanded")))
    fake_requires_grad = draw(st.booleans())
    eps_kind = draw(st.sampled_from(("float", "vector", "column", "scalar_tensor")))
    if fault == "fake":
        bad_fake = draw(st.sampled_from(("shape", "dtype", "device")))
    if fault == "epsilon":
        eps_kind = draw(st.sampled_from(("wrong_size", "int_tensor", "string", "device")))
    eps_grad = draw(st.booleans())

    def build(impl):
        real_leaf, real = make_x(xd, device)
        fake_leaf = random_values(shape, dtype, xd[3] + 1).to(device)
        if fault == "fake" and bad_fake == "shape":
            fake_leaf = random_values((shape[0] + 1,) + shape[1:], dtype, 3).to(device)
        elif fault == "fake" and bad_fake == "dtype":
            fake_leaf = fake_leaf.to(torch.float64 if dtype != torch.float64 else torch.float32)
        elif fault == "fake" and bad_fake == "device":
            fake_leaf = fake_leaf.to(other_device(device))
        if fake_requires_grad and fake_leaf.is_floating_point():
            fake_leaf.requires_grad_(True)
        fake = with_layout(fake_leaf, fake_layout)
        n = shape[0]
        e = random_values((n,), torch.float64, 11).sigmoid().to(torch.float32).to(device)
        eps = {"float": 0.3, "vector": e, "column": e.reshape([n] + [1] * (len(shape) - 1)),
               "scalar_tensor": e.new_tensor(0.7), "wrong_size": e.new_zeros(n + 1),
               "int_tensor": e.new_zeros(n, dtype=torch.int64), "string": "0.5", "device": e.to(other_device(device))}[eps_kind]
        leaves = [real_leaf, fake_leaf]
        if eps_grad and isinstance(eps, torch.Tensor) and eps.is_floating_point() and eps.device.type == device:
            eps = eps.detach().requires_grad_(True)
            leaves.append(eps)
        return (real, fake, eps), {}, leaves, []

    blame = None if fault is None else ("real",) if fault == "x_dtype" else (fault_name(fault),)
    return Spec(ops.interpolate, build, ("real", "fake", "epsilon"), xd[1], blame=blame)


@pytest.mark.parametrize("impl,device", BACKENDS)
def test_fuzz_interpolate(impl, device):
    run_fuzz(interpolate_calls, impl, device, ref_examples=30, fast_examples=8)


# ----------------------------------------------------------------------------- penalty_from_grad


@st.composite
def penalty_from_grad_calls(draw, device):
    fault = draw(faults(("x_dtype", "mode", "center")))
    xd = draw(x_description(st.just(_shape(draw)), fault))
    mode = "quadratic" if fault == "mode" else draw(st.sampled_from(("two-sided", "one-sided", "squared")))
    center = draw(st.sampled_from(("1", None, float("inf")) if fault == "center" else (1.0, 0.0, 2)))
    zero_rows = draw(st.booleans())  # some samples with an exactly-zero gradient
    return_norms = draw(st.booleans())

    def build(impl):
        leaf, g = make_x(xd, device)
        if zero_rows and g.shape[0] > 1 and g.is_floating_point():
            g = g * (torch.arange(g.shape[0], device=device) % 2).reshape([-1] + [1] * (g.dim() - 1)).to(g.dtype)
        return (g, mode, center, return_norms), {}, [leaf], []

    n = xd[0][0]
    blame = (("grad",) if fault == "x_dtype" or n == 0 else ()) + ((fault,) if fault not in (None, "x_dtype") else ())
    return Spec(ops.penalty_from_grad, build, ("grad", "mode", "center"), xd[1], blame=blame or None)


@pytest.mark.parametrize("impl,device", BACKENDS)
def test_fuzz_penalty_from_grad(impl, device):
    run_fuzz(penalty_from_grad_calls, impl, device, ref_examples=30, fast_examples=8)


# ----------------------------------------------------------------------------- gradient_penalty


def _critic(c, impl, device, dtype):
    torch.manual_seed(0)
    norm = GroupNormAct(1, c, impl=impl).to(device)
    conv = torch.nn.Conv2d(c, c, 1).to(device)
    with torch.no_grad():  # parameters on the k / 16 grid: constant inputs stay exactly constant (see random_values)
        for p in conv.parameters():
            p.copy_(torch.round(p * 16) / 16)

    def critic(x):
        h = norm(conv(x.to(conv.weight.dtype)))
        return (h * h).flatten(1).sum(1)

    return critic, list(conv.parameters()) + list(norm.parameters())


@st.composite
def gradient_penalty_calls(draw, device):
    kind = draw(st.sampled_from(tuple(KINDS)))
    fault = draw(faults(("kind", "real", "fake", "weight")))
    n = draw(st.sampled_from((2, 3, 1) + ((0,) if fault == "real" else ())))
    c, h = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    dtype = draw(st.sampled_from((torch.float32, torch.float64)))
    seed = draw(st.integers(0, 2**31 - 1))
    center = draw(st.sampled_from((1.0, 0.0)))
    constant_real = draw(st.booleans())  # a constant image: exactly-zero critic gradients under the norm

    def build(impl):
        critic, params = _critic(c, impl, device, dtype)
        real = random_values((n, c, h, h), dtype, seed).to(device)
        if constant_real:
            real = torch.full_like(real, 0.5)
        fake = random_values((n, c, h, h), dtype, seed + 1).to(device)
        if fault == "fake":
            fake = fake[:, :, :1] if h > 1 else fake.to(torch.int64)
        if fault == "real":
            real = real.to(torch.int64)
        gen = torch.Generator(device=device).manual_seed(seed)
        kwargs = dict(kind="wgan-gpp" if fault == "kind" else kind, center=center, generator=gen,
                      weight="ten" if fault == "weight" else 10.0,
                      epsilon=random_values((n,), torch.float64, seed).sigmoid().to(dtype).to(device))
        return (critic, real, fake), kwargs, params, []

    blame = None if fault is None else (fault,)
    return Spec(gradient_penalty, build, ("critic", "real", "fake", "kind", "weight"), dtype, blame=blame)


@pytest.mark.parametrize("impl,device", BACKENDS)
def test_fuzz_gradient_penalty(impl, device):
    run_fuzz(gradient_penalty_calls, impl, device, ref_examples=12, fast_examples=2)
