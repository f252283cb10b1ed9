"""Fake (meta) implementations of the minibatch-discrimination CUDA ops.

``torch.ops.fastgan.mbd_forward / mbd_backward / mbd_double_backward``
(``csrc/minibatch_discrimination.cpp``) give contiguous outputs: o (N, B)
and dm (N, B, C) in m's dtype; the double backward's (grad_m, grad_g) in
m's and g's dtypes.  Import this module once the extension is loaded; an op
the loaded library does not register is skipped, as is one that already has
a fake or meta kernel, so importing it is always safe.
"""
from __future__ import annotations

from typing import Callable


from ._fake_registry import register_fakes

__all__ = ["FAKES", "registered"]


def _mbd_forward(m, exclude_self):
    return m.new_empty((m.shape[0], m.shape[1]))


def _mbd_backward(g, m):
    return m.new_empty(m.shape)


def _mbd_double_backward(u, g, m):
    return m.new_empty(m.shape), g.new_empty((m.shape[0], m.shape[1]))


# Op name (in the ``fastgan`` namespace) -> fake implementation.
FAKES: dict[str, Callable] = {
    "mbd_forward": _mbd_forward,
    "mbd_backward": _mbd_backward,
    "mbd_double_backward": _mbd_double_backward,
}

registered: list[str] = register_fakes(FAKES)  # the ops whose fake this module registered
