"""PixelShuffle + bias / batch norm + activation: fused vs nn.PixelShuffle compositions."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

from fastgan import reference
from fastgan.nn import PixelShuffleUpsample
from fastgan.ops import pixel_shuffle_act, pixel_shuffle_batch_norm_act

from _tolerances import assert_close
from conftest import all_backend_params


def second_order(fn, tensors):
    tensors = [t.detach().clone().requires_grad_() for t in tensors]
    y = fn(*tensors)
    lin = torch.linspace(-1, 1, y.numel()).reshape(y.shape).to(y)
    first = torch.autograd.grad(y, tensors, lin, create_graph=True)
    second = torch.autograd.grad(sum((g.float() ** 2).sum() for g in first), tensors, allow_unused=True)
    return [y.detach()] + [g.detach() for g in first] + [torch.zeros_like(t) if g is None else g for g, t in
                                                        zip(second, tensors)]


def test_ref_matches_nn_composition():
    x = torch.randn(3, 12, 4, 5)
    bias = torch.randn(3)
    assert_close(reference.pixel_shuffle_act(x, 2, bias, "relu"), F.relu(nn.PixelShuffle(2)(x) + bias.view(1, 3, 1, 1)))
    bn = nn.BatchNorm2d(3)
    rm, rv = torch.zeros(3), torch.ones(3)
    y = reference.pixel_shuffle_batch_norm_act(x, 2, rm, rv, bn.weight, bn.bias, True, 0.1, 1e-5, "leaky_relu")
    assert_close(y, F.leaky_relu(bn(nn.PixelShuffle(2)(x)), 0.2))
    assert_close(rv, bn.running_var)


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("r,dtype", [(2, torch.float32), (3, torch.float32), (4, torch.float32),
                                     (2, torch.float16), (2, torch.bfloat16)])
def test_fast_pixel_shuffle_act_matches_ref(impl, device, r, dtype):
    x = torch.randn(2, 3 * r * r, 3, 3, device=device).to(dtype)
    bias = torch.randn(3, device=device)
    fast = second_order(lambda x, b: pixel_shuffle_act(x, r, b, "leaky_relu", impl=impl), [x, bias])
    ref = second_order(lambda x, b: pixel_shuffle_act(x, r, b, "leaky_relu", impl="ref"), [x, bias])
    for i, (a, e) in enumerate(zip(fast, ref)):
        assert_close(a, e, dtype, scale=1 if i == 0 else 4, name=f"output[{i}]")


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("r,dtype", [(2, torch.float32), (3, torch.float32), (2, torch.bfloat16)])
@pytest.mark.parametrize("training", [True, False])
def test_fast_pixel_shuffle_batch_norm_matches_ref(impl, device, r, dtype, training):
    x = (torch.randn(3, 2 * r * r, 3, 3, device=device) * 1.3 + 0.4).to(dtype)
    w, b = torch.rand(2, device=device) + 0.5, torch.randn(2, device=device)
    stats = {i: (torch.randn(2, device=device) * 0.1, torch.rand(2, device=device) + 0.5) for i in (impl, "ref")}
    stats["ref"] = tuple(t.clone() for t in stats[impl])

    def run(i):
        rm, rv = stats[i]
        return second_order(lambda x, w, b: pixel_shuffle_batch_norm_act(x, r, rm, rv, w, b, training, 0.1, 1e-5,
                                                                           "leaky_relu", impl=i), [x, w, b])

    fast, ref = run(impl), run("ref")
    scale = 1 if dtype == torch.float32 else 2
    for i, (a, e) in enumerate(zip(fast, ref)):
        assert_close(a, e, dtype, scale=scale * (1 if i == 0 else 4), name=f"output[{i}]")
    for a, e in zip(stats[impl], stats["ref"]):
        assert_close(a, e, torch.float32, name="running stats")


@pytest.mark.parametrize("impl", ["ref"] + [p.values[0] for p in all_backend_params()[:1]])
def test_gradcheck_gradgradcheck_float64(impl):
    if impl != "ref" and not __import__("fastgan")._backend.interpreter_usable():
        pytest.skip("Triton on CPU needs the interpreter")
    x = torch.randn(2, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(1, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(1, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, b: pixel_shuffle_batch_norm_act(x, 2, None, None, w, b, True, 0.1, 1e-5, impl=impl)  # noqa
    fast = impl != "ref"
    assert gradcheck(fn, (x, w, b), fast_mode=fast) and gradgradcheck(fn, (x, w, b), fast_mode=fast)


def test_errors():
    with pytest.raises(ValueError, match="not divisible by upscale_factor"):
        pixel_shuffle_act(torch.randn(2, 6, 3, 3), 2)
    with pytest.raises(ValueError, match="x must have 4"):
        pixel_shuffle_act(torch.randn(2, 8, 3), 2)
    with pytest.raises(ValueError, match="bias must have 2"):
        pixel_shuffle_act(torch.randn(2, 8, 3, 3), 2, torch.zeros(3))
    with pytest.raises(ValueError, match="norm must be"):
        PixelShuffleUpsample(3, 4, norm="group")
    up = PixelShuffleUpsample(3, 4)
    for bad in (torch.randn(2, 5, 3, 3), torch.randn(3, 3, 3)):
        with pytest.raises(ValueError, match=r"PixelShuffleUpsample: x must be \(N, in_channels=3, H, W\)"):
            up(bad)
    # batch norm's own checks, per output channel: a momentum outside [0, 1] would make the running stats diverge
    x, running = torch.randn(2, 8, 3, 3), (torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\], got 2.0"):
        pixel_shuffle_batch_norm_act(x, 2, *running, momentum=2.0)
    with pytest.raises(TypeError, match="momentum must be a float, got NoneType"):
        pixel_shuffle_batch_norm_act(x, 2, *running, momentum=None)
    with pytest.raises(ValueError, match="running_mean must have 2 elements"):
        pixel_shuffle_batch_norm_act(x, 2, torch.zeros(8), torch.ones(8))
    assert pixel_shuffle_batch_norm_act(x, 2, *running, momentum=1.0).shape == (2, 2, 6, 6)
    assert pixel_shuffle_batch_norm_act(x, 2, momentum=None).shape == (2, 2, 6, 6)  # no running stats to update


# ----------------------------------------------------------------------------- module


@pytest.mark.parametrize("norm", ["batch", None])
@pytest.mark.parametrize("impl", ["ref"] + (["triton"] if __import__("fastgan")._backend.interpreter_usable() else []))
def test_module_matches_conv_shuffle_norm_act(norm, impl):
    block = PixelShuffleUpsample(4, 3, scale=2, norm=norm, impl=impl)
    with torch.no_grad():
        if norm is None:
            block.bias.normal_()
        else:
            block.norm.weight.uniform_(0.5, 1.5), block.norm.bias.normal_()
    plain_norm = nn.BatchNorm2d(3) if norm else None
    if plain_norm is not None:
        plain_norm.load_state_dict(block.norm.state_dict())
    x = torch.randn(3, 4, 5, 6)
    h = nn.PixelShuffle(2)(block.conv(x))
    expected = F.leaky_relu(plain_norm(h) if norm else h + block.bias.view(1, 3, 1, 1), 0.2)
    assert_close(block(x), expected)
    if norm:
        assert_close(block.norm.running_var, plain_norm.running_var)
        assert block.norm.num_batches_tracked.item() == 1
        assert set(block.state_dict()) == {"conv.weight", "norm.weight", "norm.bias", "norm.running_mean",
                                           "norm.running_var", "norm.num_batches_tracked"}


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 4, 5])
def test_module_upsamples_by_scale_for_any_kernel_size(kernel_size):
    x = torch.randn(2, 3, 5, 7)
    for scale in (2, 3):
        block = PixelShuffleUpsample(3, 4, scale=scale, kernel_size=kernel_size, impl="ref")
        assert block(x).shape == (2, 4, 5 * scale, 7 * scale)


def test_icnr_starts_as_nearest_neighbour_upsampling():
    block = PixelShuffleUpsample(4, 3, scale=3, norm=None, activation="identity")
    x = torch.randn(2, 4, 5, 5)
    y = block(x)
    # Every r x r output block repeats one value: nearest-neighbour upsampling of a conv.
    sub = block.conv.weight[::9]  # one sub-kernel per output channel
    low = F.conv2d(x, sub, padding=1)
    assert_close(y, F.interpolate(low, scale_factor=3, mode="nearest"))
    no_icnr = PixelShuffleUpsample(4, 3, scale=3, norm=None, activation="identity", icnr=False)
    y2 = no_icnr(x)
    assert not torch.allclose(y2[..., 0::3, 0::3], y2[..., 1::3, 1::3])
