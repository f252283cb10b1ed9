"""Test configuration.

Triton kernels run on CPU tensors only under the interpreter, and the
interpreter must be switched on before any ``@triton.jit`` function is
defined: set it here, before fastgan's kernels are imported, unless a GPU is
present (the GPU suite runs the same tests compiled).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from fastgan import _backend  # noqa: E402


def fast_backends():
    """(impl, device) pairs whose fast kernels can run here."""
    out = []
    if torch.cuda.is_available():
        out += [("triton", "cuda"), ("cuda", "cuda")]
    elif _backend.interpreter_enabled():
        out.append(("triton", "cpu"))
    return out


def all_backend_params():
    """pytest params for every fast backend; CUDA ones skip without a GPU."""
    params = [pytest.param("triton", "cpu", id="triton-interp",
                           marks=pytest.mark.skipif(torch.cuda.is_available() or not _backend.interpreter_enabled(),
                                                    reason="interpreter runs only without a GPU"))]
    for impl in ("triton", "cuda"):
        params.append(pytest.param(impl, "cuda", id=f"{impl}-cuda", marks=[
            pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]))
    return params


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


@pytest.fixture(autouse=True)
def _restore_threads():
    """Trainer runs set torch's thread count (run.threads); keep it from leaking into the next test."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
