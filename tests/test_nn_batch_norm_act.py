"""The BatchNormAct modules and fastgan.convert, against nn.BatchNorm + activation."""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
from fastgan.nn import BatchNormAct1d, BatchNormAct2d, BatchNormLeakyReLU2d, BatchNormReLU2d, PixelShuffleUpsample

from _tolerances import assert_close
from conftest import all_backend_params


def plain(num_features, activation, dims=2, **kw):
    bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(num_features, **kw)
    act = {"relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(0.2), "identity": nn.Identity()}[activation]
    return nn.Sequential(bn, act)


@pytest.mark.parametrize("kw", [dict(), dict(momentum=None), dict(affine=False),
                                dict(track_running_stats=False), dict(momentum=0.3, eps=1e-3)])
@pytest.mark.parametrize("activation", ["leaky_relu", "relu", "identity"])
def test_module_matches_nn_over_train_and_eval_steps(kw, activation):
    fused = BatchNormAct2d(5, activation=activation, **kw)
    ref = plain(5, activation, **kw)
    if fused.affine:
        with torch.no_grad():
            fused.weight.uniform_(0.5, 1.5), fused.bias.normal_()
    ref[0].load_state_dict(fused.state_dict())
    for step in range(3):
        x = torch.randn(4, 5, 3, 6) * (step + 1) + step
        assert_close(fused(x), ref(x), name=f"train step {step}")
    assert_close(fused.state_dict().get("running_mean", torch.zeros(1)),
                 ref[0].state_dict().get("running_mean", torch.zeros(1)), name="running_mean")
    if fused.track_running_stats:
        assert fused.num_batches_tracked.item() == ref[0].num_batches_tracked.item() == 3
        assert_close(fused.running_var, ref[0].running_var, name="running_var")
    fused.eval(), ref.eval()
    x = torch.randn(3, 5, 2, 2)
    assert_close(fused(x), ref(x), name="eval")


def test_state_dict_loads_both_ways_and_keys_match():
    fused, bn = BatchNormAct2d(7), nn.BatchNorm2d(7)
    assert list(fused.state_dict()) == list(bn.state_dict())
    with torch.no_grad():
        bn.weight.normal_(), bn.running_mean.normal_()
    fused.load_state_dict(bn.state_dict())
    assert torch.equal(fused.weight, bn.weight) and torch.equal(fused.running_mean, bn.running_mean)
    bn2 = nn.BatchNorm2d(7)
    bn2.load_state_dict(fused.state_dict())
    assert torch.equal(bn2.running_mean, fused.running_mean)
    assert [n for n, _ in fused.named_parameters()] == ["weight", "bias"]


def test_batchnormact1d_matches_nn():
    for shape in [(6, 4), (5, 4, 9)]:
        fused, ref = BatchNormAct1d(4, activation="relu"), plain(4, "relu", dims=1)
        x = torch.randn(shape)
        assert_close(fused(x), ref(x))
        assert_close(fused.running_var, ref[0].running_var)


def test_aliases_and_repr():
    assert BatchNormLeakyReLU2d(3, negative_slope=0.1).negative_slope == 0.1
    assert BatchNormLeakyReLU2d(3).activation == "leaky_relu"
    assert BatchNormReLU2d(3).activation == "relu"
    text = repr(BatchNormAct2d(3, impl="ref"))
    assert "BatchNormAct2d(3, eps=1e-05" in text and "activation=leaky_relu, negative_slope=0.2" in text
    assert "impl='ref'" in text


def test_module_errors():
    with pytest.raises(ValueError, match="x must have 4"):
        BatchNormAct2d(3)(torch.randn(4, 3))
    with pytest.raises(ValueError, match="activation must be one of"):
        BatchNormAct2d(3, activation="tanh")
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNormAct2d(3)(torch.randn(1, 3, 1, 1))


def test_every_module_names_x_when_it_is_not_a_tensor():
    from fastgan import nn as fnn

    modules = [fnn.BatchNormAct2d(4), fnn.BatchNormAct1d(4), fnn.SyncBatchNormAct2d(4), fnn.GroupNormAct(2, 4),
               fnn.LayerNormAct2d(4), fnn.InstanceNormAct2d(4), fnn.VirtualBatchNorm2d(4), fnn.VirtualBatchNorm1d(4),
               fnn.PixelShuffleUpsample(4, 4), fnn.MinibatchDiscrimination(4, 2, 2), fnn.MinibatchStdDev()]
    for module in modules:
        for bad in ([[1.0]], None, 3.0):
            with pytest.raises(TypeError, match="x must be a torch.Tensor"):
                module(bad)


def test_instance_norm_without_per_channel_state_warns_on_a_channel_mismatch_as_torch_does():
    from fastgan import nn as fnn

    x = torch.randn(2, 3, 4, 4)
    with pytest.warns(UserWarning, match="num_features is not used"):
        assert fnn.InstanceNormAct2d(4, impl="ref")(x).shape == x.shape
    with pytest.warns(UserWarning, match="num_features"):
        nn.InstanceNorm2d(4)(x)
    with pytest.raises(ValueError, match="weight must have 3 elements"):
        fnn.InstanceNormAct2d(4, affine=True, impl="ref")(x)


def test_every_module_refuses_an_unknown_impl_at_construction():
    """Not at the first forward (a model built with a typo would fail mid-training), and convert() refuses it
    before swapping any layer."""
    from fastgan import nn as fnn

    makers = {"BatchNormAct2d": lambda impl: fnn.BatchNormAct2d(3, impl=impl),
              "BatchNormLeakyReLU2d": lambda impl: fnn.BatchNormLeakyReLU2d(3, impl=impl),
              "SyncBatchNormAct2d": lambda impl: fnn.SyncBatchNormAct2d(3, impl=impl),
              "GroupNormAct": lambda impl: fnn.GroupNormAct(1, 3, impl=impl),
              "LayerNormAct2d": lambda impl: fnn.LayerNormAct2d(3, impl=impl),
              "InstanceNormAct2d": lambda impl: fnn.InstanceNormAct2d(3, impl=impl),
              "MinibatchDiscrimination": lambda impl: fnn.MinibatchDiscrimination(4, 3, 2, impl=impl),
              "PixelShuffleUpsample": lambda impl: fnn.PixelShuffleUpsample(3, 4, impl=impl),
              "VirtualBatchNorm2d": lambda impl: fnn.VirtualBatchNorm2d(3, impl=impl)}
    for name, make in makers.items():
        for bad in ("cudnn", "", 1):
            with pytest.raises(ValueError, match="impl must be one of"):
                make(bad)
        assert make("ref").impl == "ref" and make(None).impl == "auto", name  # None: "auto", as the ops take it
    model = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU())
    with pytest.raises(ValueError, match="impl must be one of"):
        fastgan.nn.convert(model, impl="trition")
    assert isinstance(model[0], nn.BatchNorm2d)  # untouched
    assert isinstance(fastgan.nn.convert(model, impl="ref")[0], BatchNormAct2d)


def test_sync_batchnorm_conversion_leaves_fused_modules_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), BatchNormAct2d(4))
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(converted[1], BatchNormAct2d)


@pytest.mark.parametrize("impl,device", all_backend_params())
def test_module_fast_backend_matches_nn(impl, device):
    fused = BatchNormAct2d(3, impl=impl).to(device)
    ref = plain(3, "leaky_relu").to(device)
    x = torch.randn(4, 3, 5, 5, device=device)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = fused(xa), ref(xb)
    assert_close(ya, yb)
    g = torch.randn_like(ya)
    ya.backward(g), yb.backward(g)
    assert_close(xa.grad, xb.grad)
    assert_close(fused.weight.grad, ref[0].weight.grad)
    assert_close(fused.running_var, ref[0].running_var)


# ----------------------------------------------------------------------------- convert


def dcgan_generator(nz=8, ngf=4):
    return nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 4, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, 1, 4, 2, 1, bias=False), nn.Tanh())


def dcgan_discriminator(ndf=4):
    return nn.Sequential(
        nn.Conv2d(1, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 2, 1, 4, 1, 0, bias=False))


@pytest.mark.parametrize("train", [True, False])
def test_convert_sequential_dcgan(train):
    for make, inp in ((dcgan_generator, torch.randn(5, 8, 1, 1)), (dcgan_discriminator, torch.randn(5, 1, 16, 16))):
        model = make()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                with torch.no_grad():
                    m.weight.uniform_(0.5, 1.5), m.running_var.uniform_(0.5, 2)
        model.train(train)
        expected = model(inp.clone())
        keys = list(model.state_dict())
        converted = fastgan.convert(model)
        assert converted is model and isinstance(converted, nn.Sequential)
        fused = [m for m in converted.modules() if isinstance(m, BatchNormAct2d)]
        assert fused and not any(isinstance(m, nn.BatchNorm2d) for m in converted.modules())
        assert all(m.training == train for m in fused)
        assert list(converted.state_dict()) == keys
        assert_close(converted(inp.clone()), expected)


class NotSequential(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        h = F.leaky_relu(self.bn(self.conv(x)), 0.1)
        return torch.relu(self.bn2(h)) + h


def test_convert_fx_functional_activations():
    model = NotSequential()
    x = torch.randn(3, 3, 6, 6)
    expected = model(x)
    converted = fastgan.convert(model)
    kinds = sorted(m.activation for m in converted.modules() if isinstance(m, BatchNormAct2d))
    assert kinds == ["leaky_relu", "relu"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in converted.modules())
    assert_close(converted(x), expected)


class CalledTwice(nn.Module):
    """One norm module called twice in a forward, once followed by an activation."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return F.relu(self.bn(x)) + self.bn(2 * x)


@pytest.mark.parametrize("train", [True, False])
def test_convert_keeps_a_norm_called_twice_unfused(train):
    # fusing the first call's ReLU into the module would apply it to the second call as well
    model = CalledTwice().train(train)
    with torch.no_grad():
        model.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 4, 5, 5)
    expected = copy.deepcopy(model)(x)
    converted = fastgan.convert(model, impl="ref")
    assert isinstance(converted.bn, BatchNormAct2d) and converted.bn.activation == "identity"
    assert_close(converted(x), expected)


def test_convert_keeps_a_shared_norm_shared():
    bn = nn.BatchNorm2d(4)
    model = nn.ModuleDict({"a": nn.Sequential(bn, nn.ReLU()), "b": nn.Sequential(bn, nn.LeakyReLU(0.2))})
    x = torch.randn(4, 4, 3, 3)
    plain = copy.deepcopy(model)
    expected = (plain["a"](x), plain["b"](x))
    converted = fastgan.convert(model, impl="ref")
    assert converted["a"][0] is converted["b"][0] and isinstance(converted["a"][0], BatchNormAct2d)
    assert converted["a"][0].activation == "identity"  # its activations stay where they were
    assert sum(p.numel() for p in converted.parameters()) == sum(p.numel() for p in plain.parameters())
    got = (converted["a"](x), converted["b"](x))
    assert_close(got[0], expected[0])
    assert_close(got[1], expected[1])
    assert int(converted["a"][0].num_batches_tracked) == int(plain["a"][0].num_batches_tracked) == 2


class SharedAcrossSequentialAndForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 1), self.bn, nn.ReLU())

    def forward(self, x):
        return self.block(x) + F.leaky_relu(self.bn(x), 0.1)


def test_convert_shares_one_fused_module_between_a_sequential_and_the_traced_forward():
    model = SharedAcrossSequentialAndForward()
    x = torch.randn(3, 4, 5, 5)
    expected = copy.deepcopy(model)(x)
    converted = fastgan.convert(model, impl="ref")
    fused = {id(m) for m in converted.modules() if isinstance(m, BatchNormAct2d)}
    assert len(fused) == 1 and not any(isinstance(m, nn.BatchNorm2d) for m in converted.modules())
    assert_close(converted(x), expected)


@pytest.mark.parametrize("make", [lambda: nn.BatchNorm2d(4), lambda: nn.GroupNorm(2, 4),
                                  lambda: nn.InstanceNorm2d(4, affine=True)], ids=["batch", "group", "instance"])
def test_convert_keeps_frozen_norm_parameters_frozen(make):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), make(), nn.LeakyReLU(0.2))
    model[1].weight.requires_grad_(False)  # weight frozen, bias trained
    converted = fastgan.convert(model, impl="ref")
    assert type(converted[1]) is not type(make()) and type(converted[1]).__module__.startswith("fastgan.nn")
    assert [(n, p.requires_grad) for n, p in converted.named_parameters()] == [
        ("0.weight", True), ("0.bias", True), ("1.weight", False), ("1.bias", True)]


def test_convert_traces_through_a_model_holding_fastgan_modules():
    # fastgan's modules are fx leaves: their input checks would fail on a tracing proxy
    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = PixelShuffleUpsample(4, 4, impl="ref")
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return F.relu(self.bn(self.up(x)))

    model = Up()
    x = torch.randn(2, 4, 3, 3)
    expected = copy.deepcopy(model)(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "could not trace" fallback
        converted = fastgan.convert(model, impl="ref")
    assert converted.bn.activation == "relu"
    assert_close(converted(x), expected)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return F.relu(self.bn(x))
        return self.bn(x)


def test_convert_untraceable_swaps_and_warns():
    model = Untraceable()
    with pytest.warns(RuntimeWarning, match="could not trace"):
        converted = fastgan.convert(model)
    assert isinstance(converted.bn, BatchNormAct2d) and converted.bn.activation == "identity"
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        fastgan.convert("not a model")


@pytest.mark.parametrize("impl,device", all_backend_params() + [pytest.param("ref", "cpu", id="ref")])
def test_bias_false_layers_match_torch_and_convert(impl, device):
    """torch's norm layers take bias=False (a scale, no shift): the fused ones do, state dicts load both ways,
    and fastgan.convert takes such layers over (it raised: the fused module always had a bias)."""
    from fastgan.nn import GroupNormAct, InstanceNormAct2d, LayerNormAct2d

    torch.manual_seed(0)
    pairs = [(nn.BatchNorm2d(6, bias=False), BatchNormAct2d(6, activation="relu", impl=impl, bias=False)),
             (nn.GroupNorm(2, 6, bias=False), GroupNormAct(2, 6, activation="relu", impl=impl, bias=False)),
             (nn.GroupNorm(1, 6, bias=False), LayerNormAct2d(6, activation="relu", impl=impl, bias=False)),
             (nn.InstanceNorm2d(6, affine=True, bias=False),
              InstanceNormAct2d(6, affine=True, activation="relu", impl=impl, bias=False))]
    for torch_layer, fused in pairs:
        with torch.no_grad():
            torch_layer.weight.uniform_(0.5, 1.5)
        torch_layer, fused = torch_layer.to(device), fused.to(device)
        assert fused.bias is None and "bias" not in fused.state_dict()
        fused.load_state_dict(torch_layer.state_dict())
        converted = fastgan.convert(nn.Sequential(copy.deepcopy(torch_layer), nn.ReLU()), impl=impl)
        x = torch.randn(4, 6, 5, 5, device=device, requires_grad=True)
        expected = F.relu(torch_layer(x))
        for model in (fused, converted):
            got = model(x)
            assert_close(got, expected, name=type(fused).__name__)
            gx, gw = torch.autograd.grad(got.square().sum(), (x, next(model.parameters())))
            ex, ew = torch.autograd.grad(expected.square().sum(), (x, torch_layer.weight), retain_graph=True)
            assert_close(gx, ex, name="input grad")
            assert_close(gw, ew, name="weight grad")
    with pytest.raises(TypeError, match="bias must be a bool"):
        BatchNormAct2d(6, bias=None)
