"""The contract's tolerances, and a comparison that also rejects NaN / Inf."""
import torch

TOL = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (2e-2, 2e-2),
}


def assert_close(actual, expected, dtype=None, *, scale=1.0, name=""):
    """assert_close at the contract tolerance of ``dtype`` (times ``scale``)."""
    dtype = dtype or expected.dtype
    atol, rtol = TOL[dtype]
    assert torch.isfinite(actual).all(), f"{name}: non-finite values in the result"
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol * scale, rtol=rtol * scale,
                               msg=lambda m: f"{name}: {m}")
