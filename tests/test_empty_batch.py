"""Empty batches (N = 0), per op, on every backend: the rules of ``docs/edge_cases.md``.

Each op either returns an empty result of the right shape (differentiable,
buffers untouched) or raises a ValueError naming the argument; the fuzz
tests draw N = 0 too, these pin the decisions down deterministically.
"""
import pytest
import torch

from fastgan import nn as fnn
from fastgan import ops
from fastgan.penalties import gradient_penalty

from conftest import all_backend_params

BACKENDS = [pytest.param("ref", "cpu", id="ref")] + all_backend_params()


def _stats(device, c=4):
    return torch.zeros(c, device=device), torch.ones(c, device=device)


# (name, call(x, impl, device) -> output, x shape, expected output shape)
EMPTY_OK = [
    ("batch_norm_train", lambda x, impl, d: ops.batch_norm_act(x, *_stats(d), None, None, True, 0.1, 1e-5, impl=impl),
     (0, 4, 3, 3), (0, 4, 3, 3)),
    ("batch_norm_eval", lambda x, impl, d: ops.batch_norm_act(x, *_stats(d), None, None, False, 0.1, 1e-5, impl=impl),
     (0, 4, 3, 3), (0, 4, 3, 3)),
    ("group_norm", lambda x, impl, d: ops.group_norm_act(x, 2, impl=impl), (0, 4, 3, 3), (0, 4, 3, 3)),
    ("layer_norm", lambda x, impl, d: ops.layer_norm_act(x, impl=impl), (0, 4, 2), (0, 4, 2)),
    ("instance_norm", lambda x, impl, d: ops.instance_norm_act(x, *_stats(d), impl=impl), (0, 4, 3, 3), (0, 4, 3, 3)),
    ("pixel_shuffle", lambda x, impl, d: ops.pixel_shuffle_act(x, 2, torch.zeros(1, device=d), impl=impl),
     (0, 4, 3, 3), (0, 1, 6, 6)),
    ("pixel_shuffle_bn", lambda x, impl, d: ops.pixel_shuffle_batch_norm_act(x, 2, *_stats(d, 1), impl=impl),
     (0, 4, 3, 3), (0, 1, 6, 6)),
    ("virtual_batch_norm", lambda x, impl, d: ops.virtual_batch_norm(x, *_stats(d), 8, impl=impl),
     (0, 4, 3, 3), (0, 4, 3, 3)),
    ("minibatch_discrimination", lambda x, impl, d: ops.minibatch_discrimination(x, True, impl=impl),
     (0, 4, 3), (0, 4)),
    ("interpolate", lambda x, impl, d: ops.interpolate(x, x * 2, 0.5, impl=impl), (0, 4, 3), (0, 4, 3)),
]


@pytest.mark.parametrize("impl,device", BACKENDS)
@pytest.mark.parametrize("name,call,shape,out_shape", EMPTY_OK, ids=[c[0] for c in EMPTY_OK])
def test_empty_batch_gives_an_empty_differentiable_result(impl, device, name, call, shape, out_shape):
    x = torch.randn(shape, device=device, requires_grad=True)
    y = call(x, impl, device)
    assert y.shape == out_shape
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y), allow_unused=True)
    assert dx is None or dx.shape == x.shape


@pytest.mark.parametrize("impl,device", BACKENDS)
def test_empty_batch_leaves_running_stats_untouched(impl, device):
    """F.batch_norm leaves them alone; F.instance_norm would write NaN (the mean of nothing)."""
    x = torch.randn(0, 4, 3, 3, device=device)
    for call in (lambda rm, rv: ops.batch_norm_act(x, rm, rv, None, None, True, 0.1, 1e-5, impl=impl),
                 lambda rm, rv: ops.instance_norm_act(x, rm, rv, impl=impl),
                 lambda rm, rv: ops.pixel_shuffle_batch_norm_act(x, 2, rm[:1], rv[:1], impl=impl)):
        rm = torch.full((4,), 0.25, device=device)
        rv = torch.full((4,), 2.0, device=device)
        call(rm, rv)
        assert torch.equal(rm, torch.full_like(rm, 0.25)) and torch.equal(rv, torch.full_like(rv, 2.0))


@pytest.mark.parametrize("impl,device", BACKENDS)
def test_empty_reference_batch_or_penalty_batch_raises(impl, device):
    with pytest.raises(ValueError, match=r"\bx_ref\b"):
        ops.virtual_batch_reference_stats(torch.randn(0, 4, 3, 3, device=device), impl=impl)
    with pytest.raises(ValueError, match=r"\bgrad\b"):
        ops.penalty_from_grad(torch.randn(0, 4, device=device), impl=impl)
    with pytest.raises(ValueError, match=r"\breal\b"):
        gradient_penalty(lambda t: t.sum((1, 2)), torch.randn(0, 3, 3, device=device),
                         torch.randn(0, 3, 3, device=device), impl=impl)


def test_modules_on_an_empty_batch():
    """Every module: empty in, empty out (a VBN reference pass needs samples)."""
    x4 = torch.randn(0, 4, 3, 3)
    cases = [(fnn.BatchNormAct2d(4), x4, (0, 4, 3, 3)), (fnn.GroupNormAct(2, 4), x4, (0, 4, 3, 3)),
             (fnn.LayerNormAct2d(4), x4, (0, 4, 3, 3)),
             (fnn.InstanceNormAct2d(4, track_running_stats=True), x4, (0, 4, 3, 3)),
             (fnn.PixelShuffleUpsample(4, 2), x4, (0, 2, 6, 6)), (fnn.MinibatchStdDev(), x4, (0, 5, 3, 3)),
             (fnn.MinibatchDiscrimination(4, 3, 2), torch.randn(0, 4), (0, 7))]
    for module, x, shape in cases:
        assert module(x).shape == shape, type(module).__name__
        buffers = [b for b in module.buffers() if b.is_floating_point()]
        assert all(torch.isfinite(b).all() for b in buffers), type(module).__name__
    vbn = fnn.VirtualBatchNorm2d(4)
    with pytest.raises(ValueError, match=r"\bx_ref\b"):
        with fnn.virtual_batch_reference(vbn):
            vbn(x4)
    with fnn.virtual_batch_reference(vbn):
        vbn(torch.randn(2, 4, 3, 3))
    assert vbn(x4).shape == x4.shape


def test_bad_values_found_by_fuzzing_name_their_argument():
    """Regression checks for the errors the fuzz tests found without a clear message."""
    with pytest.raises(TypeError, match=r"\bweight\b"):
        gradient_penalty(lambda t: t.sum(1), torch.randn(2, 3), torch.randn(2, 3), weight="ten")
    for module, x in ((fnn.PixelShuffleUpsample(2, 1), torch.randn(2, 2, 3, 3).half()),
                      (fnn.MinibatchDiscrimination(3, 2, 2), torch.randn(2, 3).bfloat16()),
                      (fnn.MinibatchDiscrimination(3, 2, 2), torch.randint(0, 3, (2, 3)))):
        with pytest.raises(TypeError, match=r"\bx\b"):
            module(x)
    for bad in (0, -2, 2.5, True):
        with pytest.raises((ValueError, TypeError), match="num_features"):
            fnn.BatchNormAct2d(bad)
    with pytest.raises(ValueError, match="momentum"):
        fnn.BatchNormAct2d(4, momentum=1.5)
    with pytest.raises(ValueError, match=r"\bx must have more than 1 value per channel"):
        ops.batch_norm_act(torch.randn(1, 3), training=True)
