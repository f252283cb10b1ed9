"""Input checks shared by every op: clear errors that name the argument."""
from __future__ import annotations

from typing import Optional

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


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
