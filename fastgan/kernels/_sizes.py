"""Launch-size arithmetic for the host side of the Triton kernels.

``triton.cdiv`` and ``triton.next_power_of_2`` are ``constexpr_function``s
in Triton 3.8: every call from host code unwraps its arguments as constexprs
first, a few microseconds each, and a fused layer's forward + backward sized
its launches with about 18 of them (``benchmarks/host_overhead.py``).  These
are the same integer functions as plain Python.
"""
from __future__ import annotations


def cdiv(x: int, y: int) -> int:
    """ceil(x / y) for ints, as ``triton.cdiv``."""
    return (x + y - 1) // y


def next_power_of_2(n: int) -> int:
    """The smallest power of 2 >= n (0 for n = 0), as ``triton.next_power_of_2``."""
    return 1 << (n - 1).bit_length() if n > 0 else 0
