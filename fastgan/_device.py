"""The device a command or API call runs on: one rule for train, sample, eval and the demo."""
from __future__ import annotations

import torch


def resolve_device(name=None, what: str = "--device") -> torch.device:
    """``"auto"`` / None (a CUDA GPU if there is one, else the CPU), a device name or a ``torch.device``.
    A name torch does not know, or a CUDA device this machine does not have, is a ValueError naming
    ``what`` (rather than torch's error at the first tensor moved there)."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{what}={name!r} is not a device ({exc})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{what}={name!r} but no CUDA GPU is available (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{what}={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev
