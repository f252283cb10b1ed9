"""fastgan's host-side launch sizing (``fastgan/kernels/_sizes.py``) against Triton's own functions, which it
replaces on the host (they are constexpr functions in Triton 3.8, several microseconds a call)."""
import pytest

triton = pytest.importorskip("triton")

from fastgan.kernels._sizes import cdiv, next_power_of_2  # noqa: E402

VALUES = list(range(0, 4097)) + [2**31 - 2, 2**31 - 1, 2**31, 2**31 + 1, 2**40 + 3]


def test_next_power_of_2_is_tritons():
    for n in VALUES:
        assert next_power_of_2(n) == triton.next_power_of_2(n), n


def test_cdiv_is_tritons():
    for n in VALUES:
        for d in (1, 2, 3, 64, 1000, 2048):
            assert cdiv(n, d) == triton.cdiv(n, d), (n, d)
