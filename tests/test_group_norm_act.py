"""Group / instance / layer norm + activation: ref vs PyTorch, fast backends vs ref, modules."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import fastgan
from fastgan import reference
from fastgan.nn import GroupNormAct, InstanceNormAct2d, LayerNormAct2d
from fastgan.ops import group_norm_act, instance_norm_act, layer_norm_act

from _tolerances import assert_close
from conftest import all_backend_params


def act(y, activation, slope=0.2):
    return {"leaky_relu": lambda t: F.leaky_relu(t, slope), "relu": F.relu, "identity": lambda t: t}[activation](y)


def second_order(fn, x, params):
    """Output, first derivatives (wrt x and params) and second derivatives of a penalty on them."""
    x = x.detach().clone().requires_grad_()
    params = [p.detach().clone().requires_grad_() for p in params]
    y = fn(x, *params)
    g_out = torch.linspace(-1, 1, y.numel()).reshape(y.shape).to(y)
    first = torch.autograd.grad(y, [x] + params, g_out, create_graph=True)
    penalty = sum((g.float() ** 2).sum() for g in first)
    second = torch.autograd.grad(penalty, [x] + params, allow_unused=True)
    return y.detach(), [g.detach() for g in first], [None if g is None else g.detach() for g in second]


def compare(fast, ref, dtype, second_scale=4.0):
    scale = 1.0 if dtype in (torch.float32, torch.float64) else 2.0
    assert_close(fast[0], ref[0], dtype, name="y")
    for i, (a, e) in enumerate(zip(fast[1], ref[1])):
        assert_close(a, e, dtype, scale=scale, name=f"grad[{i}]")
    for i, (a, e) in enumerate(zip(fast[2], ref[2])):
        a = torch.zeros_like(e) if a is None and e is not None else a
        e = torch.zeros_like(a) if e is None and a is not None else e
        if a is not None:
            assert_close(a, e, dtype, scale=scale * second_scale, name=f"second[{i}]")


def make(shape, dtype, device="cpu", channels_last=False):
    x = (torch.randn(shape) * 1.5 + 0.2).to(device=device, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    c = shape[1]
    w = torch.rand(c, device=device) + 0.5
    b = torch.randn(c, device=device) * 0.3
    return x, w, b


# ----------------------------------------------------------------------------- ref vs PyTorch


@pytest.mark.parametrize("shape,groups", [((3, 6, 5, 7), 3), ((2, 4, 9), 4), ((4, 6, 3, 3), 1), ((2, 6, 2, 3, 2), 2)])
@pytest.mark.parametrize("activation", ["leaky_relu", "relu", "identity"])
def test_ref_group_norm_matches_torch(shape, groups, activation):
    x, w, b = make(shape, torch.float32)
    expected = act(F.group_norm(x, groups, w, b, 1e-5), activation)
    assert_close(reference.group_norm_act(x, groups, w, b, 1e-5, activation), expected)


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_ref_keeps_channels_last(groups):
    """nn.GroupNorm keeps a channels-last input channels-last, and so does the reference (the
    CPU path of a channels-last model): an NCHW output would be copied back before the next conv."""
    x, w, b = make((3, 6, 5, 4), torch.float32, channels_last=True)
    y = reference.group_norm_act(x, groups, w, b)
    assert y.stride() == x.stride()
    assert_close(y, act(F.group_norm(x, groups, w, b), "leaky_relu"))


def test_ref_layer_norm_is_group_norm_1():
    x, w, b = make((3, 5, 4, 4), torch.float32)
    assert_close(reference.layer_norm_act(x, w, b), act(F.group_norm(x, 1, w, b), "leaky_relu"))


@pytest.mark.parametrize("use_input_stats", [True, False])
def test_ref_instance_norm_matches_torch_with_running_stats(use_input_stats):
    x, w, b = make((4, 3, 5, 6), torch.float32)
    rm, rv = torch.randn(3) * 0.1, torch.rand(3) + 0.5
    rm2, rv2 = rm.clone(), rv.clone()
    y = reference.instance_norm_act(x, rm, rv, w, b, use_input_stats, 0.1, 1e-5, "relu")
    e = F.relu(F.instance_norm(x, rm2, rv2, w, b, use_input_stats, 0.1, 1e-5))
    assert_close(y, e)
    assert_close(rm, rm2, name="running_mean")
    assert_close(rv, rv2, name="running_var")


def test_ref_gradcheck_gradgradcheck():
    x, w, b = make((2, 4, 3, 2), torch.float64)
    args = [t.double().requires_grad_() for t in (x, w, b)]
    fn = lambda x, w, b: reference.group_norm_act(x, 2, w, b, 1e-5, "leaky_relu", 0.2)  # noqa: E731
    assert gradcheck(fn, args) and gradgradcheck(fn, args)


# ----------------------------------------------------------------------------- fast vs ref

CASES = [((3, 6, 5, 7), 3, False), ((4, 4, 3, 3), 4, True), ((2, 6, 11), 2, False), ((3, 6, 4, 4), 1, False)]


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("shape,groups,channels_last", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_fast_group_norm_matches_ref(impl, device, shape, groups, channels_last, dtype):
    x, w, b = make(shape, dtype, device, channels_last)
    activation = "leaky_relu" if groups % 2 else "relu"

    def run(i):
        return second_order(lambda x, w, b: group_norm_act(x, groups, w, b, 1e-5, activation, impl=i), x, [w, b])

    fast = run(impl)
    assert fast[0].dtype == dtype and fast[0].stride() == x.stride()
    compare(fast, run("ref"), dtype)


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_instance_and_layer_norm_match_ref(impl, device, dtype):
    x, w, b = make((3, 4, 5, 3), dtype, device)
    for op in (lambda x, w, b, i: instance_norm_act(x, None, None, w, b, True, 0.1, 1e-5, impl=i),
               lambda x, w, b, i: layer_norm_act(x, w, b, 1e-5, "identity", impl=i)):
        compare(second_order(lambda *a: op(*a, impl), x, [w, b]),
                second_order(lambda *a: op(*a, "ref"), x, [w, b]), dtype)


@pytest.mark.parametrize("impl,device", all_backend_params())
def test_fast_instance_norm_running_stats(impl, device):
    x, w, b = make((4, 3, 5, 6), torch.float32, device)
    stats = [(torch.zeros(3, device=device), torch.ones(3, device=device)) for _ in range(2)]
    ys = [instance_norm_act(x, rm, rv, w, b, True, 0.2, 1e-5, impl=i) for (rm, rv), i in zip(stats, (impl, "ref"))]
    assert_close(ys[0], ys[1])
    assert_close(stats[0][0], stats[1][0], name="running_mean")
    assert_close(stats[0][1], stats[1][1], name="running_var")


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("groups", [1, 2, 4])  # (one group: the Triton backend's float64 tables were stride-0 views)
def test_fast_gradcheck_gradgradcheck_float64(impl, device, groups):
    x, w, b = make((2, 4, 3, 2), torch.float64, device)
    args = [t.double().requires_grad_() for t in (x, w, b)]
    fn = lambda x, w, b: group_norm_act(x, groups, w, b, 1e-5, "leaky_relu", 0.2, impl=impl)  # noqa: E731
    assert gradcheck(fn, args, fast_mode=True) and gradgradcheck(fn, args, fast_mode=True)


def test_errors():
    with pytest.raises(ValueError, match="must divide the 6 channels"):
        group_norm_act(torch.randn(2, 6, 3, 3), 4)
    with pytest.raises(ValueError, match="num_groups must be a positive int"):
        group_norm_act(torch.randn(2, 6, 3, 3), 0)
    with pytest.raises(ValueError, match="weight must have 6"):
        group_norm_act(torch.randn(2, 6, 3, 3), 2, torch.ones(3))
    with pytest.raises(ValueError, match="x must have at least 3"):
        instance_norm_act(torch.randn(2, 6))
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        instance_norm_act(torch.randn(2, 6, 1, 1))
    # the running stats' factor, as batch_norm_act checks it (2.0 made them diverge; None failed deep inside)
    x, running = torch.randn(2, 6, 3, 3), (torch.zeros(6), torch.ones(6))
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\], got 2.0"):
        instance_norm_act(x, *running, momentum=2.0)
    with pytest.raises(TypeError, match="momentum must be a float, got NoneType"):
        instance_norm_act(x, *running, momentum=None)
    assert instance_norm_act(x, momentum=None).shape == x.shape  # no running stats: momentum unused
    assert instance_norm_act(x, *running, use_input_stats=False, momentum=None).shape == x.shape  # eval: not updated


# ----------------------------------------------------------------------------- modules


def test_group_norm_act_module_matches_nn_and_state_dict():
    fused = GroupNormAct(2, 6)
    plain = nn.GroupNorm(2, 6)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5), plain.bias.normal_()
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(3, 6, 4, 5)
    assert_close(fused(x), F.leaky_relu(plain(x), 0.2))
    nn.GroupNorm(2, 6).load_state_dict(fused.state_dict())
    assert "activation=leaky_relu, negative_slope=0.2" in repr(fused)


def test_layer_norm_act_2d_is_group_norm_1():
    fused = LayerNormAct2d(5, activation="relu")
    plain = nn.GroupNorm(1, 5)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(3, 5, 4, 4)
    assert_close(fused(x), F.relu(plain(x)))


@pytest.mark.parametrize("affine,track", [(False, False), (True, True)])
def test_instance_norm_act_module_matches_nn(affine, track):
    fused = InstanceNormAct2d(3, affine=affine, track_running_stats=track, activation="identity")
    plain = nn.InstanceNorm2d(3, affine=affine, track_running_stats=track)
    if affine:
        with torch.no_grad():
            fused.weight.uniform_(0.5, 1.5)
    plain.load_state_dict(fused.state_dict())
    for _ in range(2):
        x = torch.randn(4, 3, 5, 5) * 2 + 1
        assert_close(fused(x), plain(x))
    fused.eval(), plain.eval()
    x = torch.randn(2, 3, 4, 4)
    assert_close(fused(x), plain(x))
    assert list(fused.state_dict()) == list(plain.state_dict())


@pytest.mark.parametrize("impl,device", all_backend_params())
def test_module_fast_backend_matches_nn(impl, device):
    fused = GroupNormAct(3, 6, impl=impl).to(device)
    plain = nn.GroupNorm(3, 6).to(device)
    x = torch.randn(4, 6, 5, 5, device=device)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = fused(xa), F.leaky_relu(plain(xb), 0.2)
    assert_close(ya, yb)
    g = torch.randn_like(ya)
    ya.backward(g), yb.backward(g)
    assert_close(xa.grad, xb.grad)
    assert_close(fused.weight.grad, plain.weight.grad)


def test_convert_fuses_group_and_instance_norm_pairs():
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.GroupNorm(3, 6), nn.LeakyReLU(0.2),
                          nn.Conv2d(6, 6, 3), nn.InstanceNorm2d(6, affine=True), nn.ReLU())
    x = torch.randn(2, 3, 9, 9)
    expected = model(x)
    converted = fastgan.convert(model)
    assert isinstance(converted[1], GroupNormAct) and converted[1].activation == "leaky_relu"
    assert isinstance(converted[4], InstanceNormAct2d) and converted[4].activation == "relu"
    assert isinstance(converted[2], nn.Identity) and isinstance(converted[5], nn.Identity)
    assert_close(converted(x), expected)
