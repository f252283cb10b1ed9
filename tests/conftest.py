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
    elif _backend.interpreter_enabled() and _backend.interpreter_incompatibility() is None:
        out.append(("triton", "cpu"))
    return out


def _interpreter_skip_reason():
    if torch.cuda.is_available():
        return "interpreter runs only without a GPU"
    if not _backend.interpreter_enabled():
        return "needs TRITON_INTERPRET=1"
    return _backend.interpreter_incompatibility()


def all_backend_params():
    """pytest params for every fast backend; CUDA ones skip without a GPU."""
    skip = _interpreter_skip_reason()
    params = [pytest.param("triton", "cpu", id="triton-interp",
                           marks=pytest.mark.skipif(skip is not None, reason=skip or ""))]
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
