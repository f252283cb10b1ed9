"""Property-based fuzzing of every module in ``fastgan.nn`` (property: ``_strategies.check_call``).

Two properties per module:

* construction with drawn arguments (sizes 0, negative, non-int, bogus
  activation / norm / eps) either works or raises ValueError / TypeError
  naming the argument;
* a module built from valid arguments, in train or eval mode, on a drawn
  input (N = 0, size-1 dims, every dtype, strided views) matches the same
  module with ``impl="ref"``: output, updated buffers (running stats,
  ``num_batches_tracked``), gradients of the input and of every parameter.
"""

import pytest
import torch
from hypothesis import note
from hypothesis import strategies as st

from fastgan import nn as fnn

from _fuzz_args import ACTIVATIONS, faults, make_x, vector, x_description
from _strategies import Spec, double_backward_flags, fuzz_settings, nc_shapes, run_fuzz
from conftest import all_backend_params

BACKENDS = [pytest.param("ref", "cpu", id="ref")] + all_backend_params()

# name -> (constructor, dims of x it takes, how its channel count is passed)
MODULES = {
    "BatchNormAct1d": (fnn.BatchNormAct1d, (2, 3)),
    "BatchNormAct2d": (fnn.BatchNormAct2d, (4,)),
    "BatchNormLeakyReLU2d": (fnn.BatchNormLeakyReLU2d, (4,)),
    "BatchNormReLU2d": (fnn.BatchNormReLU2d, (4,)),
    "GroupNormAct": (fnn.GroupNormAct, (2, 3, 4)),
    "LayerNormAct2d": (fnn.LayerNormAct2d, (4,)),
    "InstanceNormAct2d": (fnn.InstanceNormAct2d, (4,)),
    "PixelShuffleUpsample": (fnn.PixelShuffleUpsample, (4,)),
    "VirtualBatchNorm1d": (fnn.VirtualBatchNorm1d, (2, 3)),
    "VirtualBatchNorm2d": (fnn.VirtualBatchNorm2d, (4,)),
    "MinibatchDiscrimination": (fnn.MinibatchDiscrimination, (2, 3)),
    "MinibatchStdDev": (fnn.MinibatchStdDev, (2, 3, 4)),
}
BN_LIKE = ("BatchNormAct1d", "BatchNormAct2d", "BatchNormLeakyReLU2d", "BatchNormReLU2d")


def _ctor(name, c, draw):
    """Valid constructor (args, kwargs) of module ``name`` for c channels.

    A kinked activation comes with affine=True (and ``build`` gives the bias
    nonzero values): see ``_fuzz_args.kink_safe``."""
    act = draw(st.sampled_from(ACTIVATIONS))
    kinked = act != "identity" or name in ("BatchNormLeakyReLU2d", "BatchNormReLU2d")
    if name in BN_LIKE:
        kw = dict(eps=draw(st.sampled_from((1e-5, 1e-3))), momentum=draw(st.sampled_from((0.1, None, 1.0))),
                  affine=draw(st.booleans()) or kinked, track_running_stats=draw(st.booleans()))
        if name in ("BatchNormAct1d", "BatchNormAct2d"):
            kw["activation"] = act
        return (c,), kw
    if name == "GroupNormAct":
        return (draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0])), c), dict(
            affine=draw(st.booleans()) or kinked, activation=act)
    if name == "LayerNormAct2d":
        return (c,), dict(affine=draw(st.booleans()) or kinked, activation=act)
    if name == "InstanceNormAct2d":
        return (c,), dict(affine=draw(st.booleans()) or kinked, track_running_stats=draw(st.booleans()),
                          activation=act)
    if name == "PixelShuffleUpsample":
        return (c, draw(st.integers(1, 2))), dict(scale=draw(st.sampled_from((1, 2))), kernel_size=1,
                                                  norm=draw(st.sampled_from(("batch", None))), activation=act)
    if name.startswith("VirtualBatchNorm"):
        return (c,), dict(activation=act, detach_reference=draw(st.booleans()))
    if name == "MinibatchDiscrimination":
        return (c, draw(st.integers(1, 3)), draw(st.integers(1, 3))), dict(
            exclude_self=draw(st.booleans()), mean=draw(st.booleans()))
    return (draw(st.sampled_from((1, 2, 4, None))),), dict(num_channels=draw(st.sampled_from((1, c))))


def _needs_impl(name):
    return name != "MinibatchStdDev"  # plain PyTorch reductions, no fused kernel


def _x_shape(name, c, shape):
    """The drawn (N, C, *spatial) adjusted to what module ``name`` takes."""
    dims = MODULES[name][1]
    rank = min(max(len(shape), dims[0]), dims[-1])
    shape = (shape + (2, 2, 2))[:rank]
    if name == "MinibatchDiscrimination":
        return (shape[0], c) if rank == 2 else (shape[0], c, 1)
    return shape


@st.composite
def module_calls(draw, device):
    name = draw(st.sampled_from(tuple(MODULES)))
    fault = draw(faults(("x_dtype", "x_rank", "x_channels")))
    c = draw(st.integers(1, 3))
    shape = _x_shape(name, c, draw(nc_shapes(0, 2, channels=c)))
    if fault == "x_rank":
        shape = shape[:1] if draw(st.booleans()) else shape + (1,) * (6 - len(shape))
    if fault == "x_channels":
        shape = (shape[0], c + 1) + shape[2:]
    xd = draw(x_description(st.just(shape), fault))
    ctor_args, ctor_kwargs = _ctor(name, c, draw)
    training = draw(st.booleans())
    seed = draw(st.integers(0, 2**20))
    double = draw(double_backward_flags())
    steps = draw(st.sampled_from((1, 2)))  # a second step uses updated running stats / counters
    in_x_dtype = draw(st.booleans())  # parameters and buffers in x's dtype (a half-precision model)

    note(f"{name}{ctor_args} {ctor_kwargs} x={xd} training={training} steps={steps} in_x_dtype={in_x_dtype}")

    def build(impl):
        cls = MODULES[name][0]
        torch.manual_seed(seed)
        kw = dict(ctor_kwargs, impl=impl) if _needs_impl(name) else dict(ctor_kwargs)
        module = cls(*ctor_args, **kw).to(device)
        module.train(training)
        with torch.no_grad():  # nonzero biases (they start at 0): off the activation's kink
            for pname, p in module.named_parameters():
                if pname.endswith("bias"):
                    p.copy_(vector(p.numel(), p.dtype, 1001, device))
        leaf, x = make_x(xd, device)
        if in_x_dtype and x.is_floating_point():
            module.to(x.dtype)
        if name.startswith("VirtualBatchNorm"):  # a valid reference pass first, whatever x is
            ref_shape = (2, c) + tuple(_x_shape(name, c, (2, c, 2, 2))[2:])
            ref_batch = torch.randn(ref_shape, generator=torch.Generator().manual_seed(seed))
            with fnn.virtual_batch_reference(module):
                module(ref_batch.to(device=device, dtype=x.dtype if x.is_floating_point() else torch.float32))
        leaves = [leaf] + [p for p in module.parameters()]
        buffers = [b for b in module.buffers()]
        return (module, x, steps), {}, leaves, buffers

    blame = None if fault is None else ("x",)
    dtype = xd[1]
    return Spec(_forward, build, ("x",), dtype, double=double and name != "MinibatchStdDev", blame=blame)


def _forward(module, x, steps, impl):
    """``steps`` forward passes (the module's impl was fixed at construction); the last output."""
    for _ in range(steps):
        y = module(x)
    return y


@pytest.mark.parametrize("impl,device", BACKENDS)
def test_fuzz_modules(impl, device):
    run_fuzz(module_calls, impl, device, ref_examples=40, fast_examples=14)


# ----------------------------------------------------------------------------- constructors

BAD_VALUES = (0, -1, 2.5, "3", None, True)


@st.composite
def constructor_calls(draw):
    name = draw(st.sampled_from(tuple(MODULES)))
    c = 2
    args, kwargs = _ctor(name, c, draw)
    args = list(args)
    which = draw(st.sampled_from(("none", "arg", "activation", "eps", "norm", "scale")))
    blame = None
    if which == "arg" and args:
        i = draw(st.integers(0, len(args) - 1))
        args[i] = draw(st.sampled_from(BAD_VALUES))
        blame = i
    elif which == "activation" and "activation" in kwargs:
        kwargs["activation"], blame = "tanh", "activation"
    elif which == "eps" and name not in ("PixelShuffleUpsample", "MinibatchDiscrimination"):
        kwargs["eps"], blame = draw(st.sampled_from((0.0, -1.0, "1e-5"))), "eps"
    elif which == "norm" and name == "PixelShuffleUpsample":
        kwargs["norm"], blame = "group", "norm"
    elif which == "scale" and name == "PixelShuffleUpsample":
        kwargs["scale"], blame = draw(st.sampled_from((0, 1.5))), "scale"
    return name, tuple(args), kwargs, blame


def _param_names(name):
    import inspect
    return [p for p in inspect.signature(MODULES[name][0].__init__).parameters if p != "self"]


def test_fuzz_module_constructors():
    """Construction either succeeds (and the module runs on a valid input) or raises
    ValueError / TypeError naming the bad argument."""
    from hypothesis import given

    @fuzz_settings(max_examples=40)
    @given(call=constructor_calls())
    def property_holds(call):
        name, args, kwargs, blame = call
        names = _param_names(name)
        try:
            module = MODULES[name][0](*args, **kwargs)
        except (ValueError, TypeError) as exc:
            msg = str(exc)
            want = names[blame] if isinstance(blame, int) else blame
            assert want is None or want in msg or (want in ("num_features", "num_channels", "in_features")
                                                   and any(n in msg for n in names)), (name, args, kwargs, msg)
            return
        # An accepted bad value must still fail clearly at the first forward, never silently.
        if blame is None:
            return
        x = torch.randn(4, 2, 3, 3)
        x = x.flatten(2) if MODULES[name][1][0] == 2 and 4 not in MODULES[name][1] else x
        if name.startswith("VirtualBatchNorm"):
            return
        try:
            module(x)
        except (ValueError, TypeError) as exc:
            want = names[blame] if isinstance(blame, int) else blame
            assert want in str(exc), (name, args, kwargs, str(exc))
            return
        raise AssertionError(f"{name}{args, kwargs} accepted a bad argument and ran")

    property_holds()
