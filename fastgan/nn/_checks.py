"""Constructor argument checks shared by the fused modules: a clear ValueError /
TypeError naming the argument instead of an error from deep inside
``torch.empty`` (or a module that only fails at its first forward)."""
from __future__ import annotations

import torch

from .._validation import check_positive_float


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def check_eps(eps) -> float:
    return check_positive_float("eps", eps)


def check_impl(impl) -> str:
    """One of fastgan's backend names (None: "auto", as the ops take it): anything else is refused here, at
    construction, rather than at the first forward."""
    from .._backend import IMPLS

    if impl is None:
        return "auto"
    if not isinstance(impl, str) or impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def check_momentum(momentum) -> None:
    """None (cumulative average) or a float in [0, 1], as nn.BatchNorm's momentum."""
    if momentum is None:
        return
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
        raise TypeError(f"momentum must be a float or None, got {type(momentum).__name__}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1] (or None), got {momentum}")


def check_input_rank(module_name: str, x, dims: tuple) -> None:
    """x must be a tensor with one of ``dims`` dimensions (a list or None fails here, not in ``.dim()``)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{module_name}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in dims:
        raise ValueError(f"{module_name}: x must have {' or '.join(map(str, dims))} dimensions, "
                         f"got shape {tuple(x.shape)}")


def check_input_matches(module_name: str, x, param) -> None:
    """x must be a floating tensor of ``param``'s dtype and device (outside autocast), for
    modules whose first step is a plain matmul / conv: that would raise a RuntimeError."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{module_name}: x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{module_name}: x must be a floating tensor, got {x.dtype}")
    if x.device != param.device:
        raise ValueError(f"{module_name}: x is on {x.device} but the module's parameters are on {param.device}")
    if x.dtype != param.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"{module_name}: x is {x.dtype} but the module's parameters are {param.dtype}; "
                        "convert one of them (or run under torch.autocast)")
