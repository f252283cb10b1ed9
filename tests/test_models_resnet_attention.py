"""Issue 13 architectures: SAGAN self-attention, SNGAN-style residual G / D, dropout in G, DCGAN init, average-pool
downsampling, and gradient penalties (double backward) through every fastgan layer in these blocks."""
import pytest
import torch
from torch import nn

from fastgan.models import (DCGANGenerator, MLPGenerator, ResBlockDown, ResBlockUp, ResNetDiscriminator,
                            ResNetGenerator, SelfAttention2d, add_dropout, set_impl)
from fastgan.models.attention import reference_self_attention
from fastgan.nn import BatchNormAct2d, InstanceNormAct2d, LayerNormAct2d
from fastgan.penalties import gradient_penalty

from _tolerances import assert_close
from conftest import all_backend_params


# ----------------------------------------------------------------------------
# Self-attention
# ----------------------------------------------------------------------------

def test_attention_is_the_identity_at_init():
    block = SelfAttention2d(16)
    assert block.gamma.item() == 0.0 and block.gamma.requires_grad
    x = torch.randn(3, 16, 5, 7)
    assert torch.equal(block(x), x)
    # ... but not a dead block: gamma gets a gradient from the attention output.
    block(x).mul(torch.randn_like(x)).sum().backward()
    assert block.gamma.grad is not None and block.gamma.grad.abs().item() > 0


@pytest.mark.parametrize("sdpa", ["auto", "math"])
def test_attention_matches_the_sagan_formula(sdpa):
    torch.manual_seed(0)
    block = SelfAttention2d(16, sdpa=sdpa).double()
    with torch.no_grad():
        block.gamma.fill_(0.7)
    x = torch.randn(2, 16, 6, 5, dtype=torch.float64)
    assert_close(block(x), reference_self_attention(x, block), name=f"attention {sdpa}")
    # a non-local effect: changing one position changes the output everywhere
    x2 = x.clone()
    x2[:, :, 0, 0] += 1.0
    changed = (block(x2) - block(x)).abs().sum(1)[0]
    assert (changed > 0).float().mean() == 1.0


@pytest.mark.parametrize("sdpa", ["auto", "math"])
def test_attention_double_backward_matches_the_formula(sdpa):
    """A gradient penalty through the block: d/dtheta ||d block(x) / dx||^2 equals that of the explicit-softmax
    formula (plain autograd, differentiable to any order)."""
    torch.manual_seed(0)
    block = SelfAttention2d(8, key_channels=2, value_channels=4, sdpa=sdpa).double()
    with torch.no_grad():
        block.gamma.fill_(0.5)
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    w = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    results = []
    for fn in (block, lambda t: reference_self_attention(t, block)):
        block.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((fn(xi) * w).sum(), xi, create_graph=True)
        g.square().sum().backward()
        results.append({k: p.grad.clone() for k, p in block.named_parameters()})
    for k in results[1]:
        assert_close(results[0][k], results[1][k], name=f"d penalty / d {k}")
    assert results[0]["query.weight"].abs().sum() > 0  # second-order terms through the softmax


def test_attention_bad_arguments():
    with pytest.raises(ValueError, match="channels"):
        SelfAttention2d(0)
    with pytest.raises(ValueError, match="sdpa"):
        SelfAttention2d(8, sdpa="flash")
    with pytest.raises(ValueError, match="x must have shape"):
        SelfAttention2d(8)(torch.randn(2, 4, 3, 3))


# ----------------------------------------------------------------------------
# Residual blocks and models
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("downsample", ["avgpool", "stride"])
def test_residual_block_shapes_and_skip(downsample):
    up = ResBlockUp(8, 4)
    assert up(torch.randn(2, 8, 5, 5)).shape == (2, 4, 10, 10)
    for first in (True, False):
        down = ResBlockDown(3 if first else 8, 6, first=first, downsample=downsample)
        cin = 3 if first else 8
        assert down(torch.randn(2, cin, 8, 8)).shape == (2, 6, 4, 4)
    # The residual path: with the main branch's last conv zeroed, the block is its shortcut alone.
    block = ResBlockDown(4, 6, downsample="avgpool")
    with torch.no_grad():
        block.conv2.weight.zero_()
        block.conv2.bias.zero_()
    x = torch.randn(2, 4, 8, 8)
    assert_close(block(x), nn.functional.avg_pool2d(block.shortcut(x), 2), name="shortcut")


def test_first_block_pools_before_its_shortcut_conv():
    """The first D block pools, then applies its 1x1 conv (cheaper); for a 1x1 conv that is the same."""
    block = ResBlockDown(3, 6, first=True, downsample="avgpool")
    x = torch.randn(2, 3, 8, 8)
    main = nn.functional.avg_pool2d(block.conv2(block.pre2(block.conv1(x))), 2)
    assert_close(block(x), main + nn.functional.avg_pool2d(block.shortcut(x), 2), name="first block")


@pytest.mark.parametrize("size,attention_res", [(8, 0), (16, 8)])
def test_resnet_shapes_widths_and_attention_placement(size, attention_res):
    g = ResNetGenerator(size, nz=8, ngf=4, channels=3, attention_res=attention_res)
    d = ResNetDiscriminator(size, ndf=4, channels=3, attention_res=attention_res)
    x = g(torch.randn(5, 8))
    assert x.shape == (5, 3, size, size) and x.abs().max() <= 1
    assert d(x).shape == (5,)
    k = size.bit_length() - 3
    assert d.features(x).shape == (5, 4 * 2 ** (k - 1)) == (5, d.feature_dim)
    assert torch.equal(d.head(d.features(x)), d(x))
    n_att = sum(isinstance(m, SelfAttention2d) for m in list(g.modules()) + list(d.modules()))
    assert n_att == (2 if attention_res else 0)
    if attention_res:  # the block sits where the feature maps have that side
        seen = []
        for model, inp in ((g, torch.randn(2, 8)), (d, x[:2])):
            hook = model.attention.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[-2:])))
            model(inp)
            hook.remove()
        assert seen == [(attention_res, attention_res)] * 2
        assert d.attention.sdpa == "math" and g.attention.sdpa == "auto"


def test_resnet_bad_arguments():
    with pytest.raises(ValueError, match="attention_res=12"):
        ResNetGenerator(32, attention_res=12)
    with pytest.raises(ValueError, match="attention_res=32"):
        ResNetDiscriminator(32, attention_res=32)  # D's maps are 16, 8, 4
    with pytest.raises(ValueError, match="image_size"):
        ResNetGenerator(24)
    with pytest.raises(ValueError, match="dropout"):
        ResNetGenerator(16, dropout=1.5)
    with pytest.raises(ValueError, match="downsample"):
        ResNetDiscriminator(16, downsample="maxpool")


def test_resnet_fused_layers_and_plain_twin_agree():
    torch.manual_seed(0)
    fused = ResNetGenerator(16, nz=8, ngf=4, channels=1, fused=True)
    plain = ResNetGenerator(16, nz=8, ngf=4, channels=1, fused=False)
    assert any(isinstance(m, BatchNormAct2d) for m in fused.modules())
    assert not any(isinstance(m, BatchNormAct2d) for m in plain.modules())
    plain.load_state_dict(fused.state_dict())  # same keys
    z = torch.randn(4, 8)
    assert_close(fused(z), plain(z), name="fused vs plain ResNet G")
    d_fused = ResNetDiscriminator(16, ndf=4, channels=1, norm="layer", fused=True)
    assert any(isinstance(m, LayerNormAct2d) for m in d_fused.modules())


def test_avgpool_and_stride_downsampling_differ_in_layers():
    avg = ResNetDiscriminator(16, ndf=4, channels=1, downsample="avgpool")
    strided = ResNetDiscriminator(16, ndf=4, channels=1, downsample="stride")
    assert avg.blocks[1].conv2.stride == (1, 1) and strided.blocks[1].conv2.stride == (2, 2)
    x = torch.randn(2, 1, 16, 16)
    assert avg(x).shape == strided(x).shape == (2,)


# ----------------------------------------------------------------------------
# Initialisation
# ----------------------------------------------------------------------------

def test_dcgan_init_on_resnet_models_and_off_switch():
    torch.manual_seed(0)

    def conv_std(model):
        w = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))])
        return w.std().item(), w.mean().item()

    for model in (ResNetGenerator(32, nz=64, ngf=32, channels=3), ResNetDiscriminator(32, ndf=32, channels=3)):
        std, mean = conv_std(model)
        assert abs(std - 0.02) < 1e-3 and abs(mean) < 1e-3
        bns = [m for m in model.modules() if isinstance(m, BatchNormAct2d)]
        if bns:
            scales = torch.cat([m.weight for m in bns])
            assert abs(scales.mean().item() - 1) < 0.01 and abs(scales.std().item() - 0.02) < 0.01
    std, _ = conv_std(ResNetGenerator(32, nz=64, ngf=32, channels=3, init=False))
    assert abs(std - 0.02) > 0.005  # PyTorch's (Kaiming-uniform) init is a different scale


# ----------------------------------------------------------------------------
# Dropout in G
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["dcgan", "resnet", "mlp"])
def test_generator_dropout_active_in_train_mode_only(which):
    torch.manual_seed(0)
    if which == "dcgan":
        build = lambda: DCGANGenerator(16, nz=8, ngf=8, channels=1)  # noqa: E731
    elif which == "mlp":
        build = lambda: MLPGenerator(nz=4, hidden=32)  # noqa: E731
    else:
        build = None
    if build is not None:
        g = build()
        keys = set(g.state_dict())
        add_dropout(g.main, 0.5)
        assert set(g.state_dict()) == keys  # dropout adds no parameters and moves none
    else:
        g = ResNetGenerator(16, nz=8, ngf=8, channels=1, dropout=0.5)
    assert sum(isinstance(m, nn.Dropout) for m in g.modules()) >= 1
    z = torch.randn(16, g.nz)
    g.train()
    assert not torch.equal(g(z), g(z))  # fresh masks each call (BN in train mode alone is deterministic)
    g.eval()
    assert torch.equal(g(z), g(z))
    ref = build() if build is not None else ResNetGenerator(16, nz=8, ngf=8, channels=1)
    ref.load_state_dict(g.state_dict())
    ref.train()
    assert torch.equal(ref(z), ref(z))  # the control: no dropout, no randomness


def test_add_dropout_bad_arguments():
    with pytest.raises(TypeError, match="main"):
        add_dropout(nn.Linear(2, 2), 0.5)
    with pytest.raises(ValueError, match="p must be"):
        add_dropout(nn.Sequential(nn.ReLU()), 1.0)


# ----------------------------------------------------------------------------
# Gradient penalties through the blocks (double backward through every fastgan layer in them)
# ----------------------------------------------------------------------------

def _penalty_grads(d, x_real, x_fake):
    d.zero_grad(set_to_none=True)
    gp = gradient_penalty(d, x_real, x_fake, kind="wgan-gp", epsilon=0.3, impl=getattr(d, "_impl", "ref"))
    gp.backward()
    return gp.detach(), {k: p.grad.detach().clone() for k, p in d.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("norm", ["layer", "instance", "batch"])
def test_penalty_through_resnet_discriminator_ref_float64(norm):
    """The penalty's gradient w.r.t. D's weights (a double backward through the fused norm+act, attention,
    spectral norm) matches finite differences of the penalty (float64, ref)."""
    torch.manual_seed(0)
    d = ResNetDiscriminator(8, ndf=2, channels=1, norm=norm, activation="leaky_relu", attention_res=4,
                            impl="ref").double()
    fused = {"layer": LayerNormAct2d, "instance": InstanceNormAct2d, "batch": BatchNormAct2d}[norm]
    assert any(isinstance(m, fused) for m in d.modules())  # the fused fastgan layer is in the path
    with torch.no_grad():
        d.attention.gamma.fill_(0.5)
    real = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    fake = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    gp, grads = _penalty_grads(d, real, fake)
    # every weight but the last bias (which does not change d D / dx) gets a penalty gradient
    assert gp > 0 and set(grads) == {k for k, _ in d.named_parameters()} - {"head_layers.0.bias"}
    # finite differences along a random direction of every parameter
    params = dict(d.named_parameters())
    direction = {k: torch.randn_like(p) for k, p in params.items()}
    h = 1e-6
    with torch.no_grad():
        for k, p in params.items():
            p.add_(h * direction[k])
    plus = gradient_penalty(d, real, fake, kind="wgan-gp", epsilon=0.3, impl="ref").item()
    with torch.no_grad():
        for k, p in params.items():
            p.sub_(2 * h * direction[k])
    minus = gradient_penalty(d, real, fake, kind="wgan-gp", epsilon=0.3, impl="ref").item()
    numeric = (plus - minus) / (2 * h)
    analytic = sum((grads[k] * direction[k]).sum().item() for k in grads)
    assert abs(numeric - analytic) <= 1e-5 * max(1.0, abs(numeric)), (numeric, analytic)


@pytest.mark.parametrize("norm", ["layer", "batch"])
@pytest.mark.parametrize("impl,device", all_backend_params())
def test_penalty_through_resnet_discriminator_fast_backend_matches_ref(impl, device, norm):
    """Fused layers on a fast backend (Triton interpreter on CPU): the penalty and its weight gradients equal
    the ref backend's (tiny: the interpreter is slow)."""
    torch.manual_seed(0)
    d = ResNetDiscriminator(8, ndf=2, channels=1, norm=norm, activation="leaky_relu", attention_res=4,
                            spectral_norm=True, impl="ref").to(device)
    with torch.no_grad():
        d.attention.gamma.fill_(0.5)
    real, fake = torch.randn(2, 2, 1, 8, 8, device=device)
    d.eval()  # spectral norm: no power iteration, so both runs see the same weights
    if norm == "batch":  # ... but batch norm in training mode (batch statistics, as under a penalty)
        for m in d.modules():
            if isinstance(m, BatchNormAct2d):
                m.train()
    gp_ref, g_ref = _penalty_grads(d, real, fake)
    set_impl(d, impl)
    d._impl = impl
    gp_fast, g_fast = _penalty_grads(d, real, fake)
    assert_close(gp_fast, gp_ref, scale=10, name=f"{impl} penalty")
    assert g_fast.keys() == g_ref.keys()
    for k in g_ref:
        assert_close(g_fast[k], g_ref[k], scale=100, name=f"{impl} d penalty / d {k}")


def test_strided_shortcut_is_a_strided_1x1_conv_and_survives_channels_last():
    """downsample='stride': the shortcut is the 1x1 conv of every other pixel (= a stride-2 1x1 conv; written
    so because torch 2.14's CPU backward of a strided 1x1 conv on channels_last input with one thread
    corrupts the heap)."""
    block = ResBlockDown(4, 6, downsample="stride")
    x = torch.randn(2, 4, 8, 8)
    main = block.conv2(block.pre2(block.conv1(block.pre1(x))))
    strided = nn.functional.conv2d(x, block.shortcut.weight, block.shortcut.bias, stride=2)
    assert_close(block(x), main + strided, name="stride shortcut")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        d = ResNetDiscriminator(16, ndf=4, channels=1, downsample="stride").to(memory_format=torch.channels_last)
        for _ in range(3):
            d(torch.randn(8, 1, 16, 16).contiguous(memory_format=torch.channels_last)).mean().backward()
    finally:
        torch.set_num_threads(threads)
    assert all(torch.isfinite(p.grad).all() for p in d.parameters())
