"""Registering fake (meta) kernels for the ``torch.ops.fastgan`` CUDA ops.

Each op family lists its fakes in its own ``_fake*.py`` (``FAKES``: op name
-> function) and calls ``register_fakes``.  An op the loaded library does
not register is skipped, as is one that already has a fake or meta kernel,
so importing those modules is always safe.
"""
from __future__ import annotations

from typing import Callable

import torch


def _op_exists(namespace: str, name: str) -> bool:
    try:
        getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _has_meta_kernel(qualname: str) -> bool:
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "Meta"))
    except Exception:  # pragma: no cover - private API changed
        return False


def register_fakes(fakes: dict[str, Callable], namespace: str = "fastgan") -> list[str]:
    """Register each fake whose op exists and has none yet; returns the names registered.

    ``namespace``: the library's; the tests' CPU emulator of ``csrc/`` registers the same ops
    as ``fastgan_emu`` and gives them these fakes to trace them with torch.compile."""
    registered = []
    for name, fake in fakes.items():
        qualname = f"{namespace}::{name}"
        if not _op_exists(namespace, name) or _has_meta_kernel(qualname):
            continue
        torch.library.register_fake(qualname, fake)
        registered.append(name)
    return registered
