"""Input checks shared by every op: clear errors that name the argument."""
from __future__ import annotations

import math
from typing import Optional

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_FLOATS = frozenset(FLOAT_DTYPES)


def usual_norm_arguments(x, vectors, eps, min_dim: int = 2, channels: Optional[int] = None) -> bool:
    """Whether a norm layer's arguments are the usual valid ones, checked in one pass: x a floating tensor of
    at least ``min_dim`` dimensions, each of ``vectors`` None or a floating (C,) tensor on x's device (C: x's
    channels, or ``channels`` -- a pixel shuffle's output channels), eps a positive float.  True only where
    the detailed checks (``check_tensor``, ``check_channel_vector``, ``check_positive_float``) pass
    (``tests/test_validation.py`` holds the two together); False sends the caller to them, and they name
    the argument.  Every fused layer's forward runs this, and a host-bound training step pays for each line
    of it: a few attribute reads instead of a dozen function calls."""
    if not (isinstance(x, torch.Tensor) and x.dtype in _FLOATS and x.dim() >= min_dim
            and type(eps) is float and eps > 0):
        return False
    shape, device = (x.shape[1] if channels is None else channels,), x.device
    for t in vectors:
        if t is not None and not (isinstance(t, torch.Tensor) and t.dtype in _FLOATS and t.shape == shape
                                  and t.device == device):
            return False
    return True


def is_finite_number(value) -> bool:
    """``value`` is finite (not inf, not NaN): ``math.isfinite`` without the call torch.compile cannot trace
    on a symbolic float (dynamic shapes make float arguments symbolic)."""
    return abs(value) < math.inf


def check_tensor(name: str, t, *, min_dim: int = 1, max_dim: Optional[int] = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float32, float16, bfloat16 or float64), "
                        f"got {t.dtype}")
    if t.dim() < min_dim or (max_dim is not None and t.dim() > max_dim):
        want = f"at least {min_dim}" if max_dim is None else (
            f"{min_dim}" if min_dim == max_dim else f"{min_dim} to {max_dim}")
        raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(t.shape)}")


def check_channel_vector(name: str, t, channels: int, device: torch.device) -> None:
    """An optional per-channel (C,) tensor: weight, bias, running stats."""
    if t is None:
        return
    check_tensor(name, t, min_dim=1, max_dim=1)
    if t.numel() != channels:
        raise ValueError(f"{name} must have {channels} elements (one per channel of x), "
                         f"got shape {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but x is on {device}; put them on one device")


def check_positive_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)


def check_momentum_factor(momentum) -> None:
    """The factor an op updates running stats by: a float in [0, 1] (the modules turn nn.BatchNorm's
    momentum=None, a cumulative average, into each step's factor before calling the op)."""
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
        raise TypeError(f"momentum must be a float, got {type(momentum).__name__}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
