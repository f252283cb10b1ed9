"""Tensors on two devices (CUDA + CPU): a ValueError naming the argument, never a CUDA crash.

Skipped without a GPU (the fuzz tests use the meta device as the second
device on CPU-only machines); runs in the GPU suite.
"""
import pytest
import torch

from fastgan import ops

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

IMPLS = ["ref", "triton", "cuda"]


def _calls(x, v):
    """(argument name, call) pairs with ``v`` (a (4,) vector) in that argument's place."""
    return [
        ("weight", lambda impl: ops.batch_norm_act(x, None, None, v, None, True, impl=impl)),
        ("running_mean", lambda impl: ops.batch_norm_act(x, v, v.clone(), None, None, True, impl=impl)),
        ("bias", lambda impl: ops.group_norm_act(x, 2, None, v, impl=impl)),
        ("weight", lambda impl: ops.instance_norm_act(x, None, None, v, None, impl=impl)),
        ("ref_mean", lambda impl: ops.virtual_batch_norm(x, v, v.clone(), 4, impl=impl)),
        ("bias", lambda impl: ops.pixel_shuffle_act(x, 2, v[:1], impl=impl)),
    ]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("x_device,v_device", [("cuda", "cpu"), ("cpu", "cuda")])
def test_parameters_on_another_device(impl, x_device, v_device):
    x = torch.randn(3, 4, 2, 2, device=x_device)
    v = torch.rand(4, device=v_device) + 0.5
    for name, call in _calls(x, v):
        if impl != "ref" and x_device == "cpu":
            continue  # the fast backends do not take CPU x here (a BackendUnavailableError, tested elsewhere)
        with pytest.raises(ValueError, match=rf"\b{name}\b"):
            call(impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_penalty_inputs_on_two_devices(impl):
    real, fake = torch.randn(3, 4, device="cuda"), torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"\bfake\b|\breal\b"):
        ops.interpolate(real, fake, 0.5, impl=impl)
    with pytest.raises(ValueError, match=r"\bepsilon\b"):
        ops.interpolate(real, real * 2, torch.rand(3), impl=impl)
