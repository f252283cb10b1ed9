"""Backend selection: which implementation (ref, triton, cuda) runs an op.

The rules are the contract's (``shared/design.md``, "Backends"):

* every op takes ``impl=``; ``"auto"`` is the default and the environment
  variable ``FASTGAN_IMPL`` (read at call time) replaces it;
* ``auto`` picks ``cuda`` for CUDA tensors when ``fastgan._C`` is loaded,
  else ``triton`` for CUDA tensors, else ``ref``;
* an explicit backend that cannot run raises a clear error, a silent
  downgrade under ``auto`` warns once naming the reason.
"""
from __future__ import annotations

import functools
import importlib
import os
import warnings
from typing import Optional

import torch

from . import _ext

IMPLS = ("auto", "ref", "triton", "cuda")
_warned: set = set()


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here."""


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def triton_status() -> tuple[bool, str]:
    """(importable, reason) for the Triton package."""
    try:
        import triton  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the machine
        return False, f"Triton is not importable ({exc.__class__.__name__}: {exc})"
    return True, f"Triton {triton.__version__}"


def _version(text: str) -> tuple:
    parts = []
    for piece in text.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


@functools.lru_cache(maxsize=None)
def interpreter_incompatibility(triton_version: Optional[str] = None,
                                numpy_version: Optional[str] = None) -> Optional[str]:
    """Why Triton's interpreter can't run here (None when it can).

    Triton 3.6 and older turn a kernel's scalar arguments into Python ints with
    ``int()`` of a 1-element array, which numpy 2.3 made an error: every kernel
    with a loop over a runtime bound fails deep inside the interpreter."""
    import numpy

    import triton

    triton_version = triton_version or triton.__version__
    numpy_version = numpy_version or numpy.__version__
    if _version(triton_version) < (3, 7) and _version(numpy_version) >= (2, 3):
        return (f"Triton {triton_version}'s interpreter fails with numpy {numpy_version} (int() of a 1-element "
                "array, an error since numpy 2.3): use Triton >= 3.7 or numpy < 2.3")
    return None


def interpreter_usable() -> bool:
    """TRITON_INTERPRET=1 is set and this Triton's interpreter can run with this numpy."""
    return interpreter_enabled() and interpreter_incompatibility() is None


def triton_reason_unusable(device: torch.device) -> Optional[str]:
    """Why the Triton kernels can't run on ``device`` (None when they can)."""
    ok, reason = triton_status()
    if not ok:
        return reason
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        from .kernels import _target

        if _target.compile_only is not None:
            return None
        if interpreter_enabled():
            return interpreter_incompatibility()
        return ("Triton kernels run on CPU tensors only under TRITON_INTERPRET=1 "
                "(set it before fastgan's kernels are imported)")
    return f"Triton kernels do not run on {device.type} tensors"


def cuda_reason_unusable(device: torch.device) -> Optional[str]:
    """Why the CUDA extension can't run on ``device`` (None when it can)."""
    if device.type != "cuda":
        return f"the cuda backend needs CUDA tensors, got {device.type} tensors"
    loaded, reason = _ext.load()
    return None if loaded else reason


def requested_impl(impl: Optional[str]) -> str:
    """The impl asked for: the argument, with FASTGAN_IMPL replacing ``auto``."""
    if impl is None or impl == "auto":
        env = os.environ.get("FASTGAN_IMPL")
        if env is None:  # the usual case, first: this runs in every op call
            return "auto"
        impl = "auto"
    if not isinstance(impl, str) or impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        env = os.environ.get("FASTGAN_IMPL", "auto").strip().lower() or "auto"
        if env not in IMPLS:
            raise ValueError(f"FASTGAN_IMPL must be one of {IMPLS}, got {env!r}")
        impl = env
    return impl


def resolve(impl: Optional[str], device: torch.device, op: str = "op", cuda_support: bool = True) -> str:
    """Return the concrete backend ("ref" | "triton" | "cuda") for ``device``.

    ``cuda_support=False`` marks an op (or a variant of one) that has no CUDA
    kernels yet: ``auto`` then uses Triton for CUDA tensors and an explicit
    ``impl="cuda"`` raises.  Under ``torch.compile`` the Triton kernels are not
    used (see ``_resolve``)."""
    return _resolve(impl, device, op, cuda_support, torch.compiler.is_compiling())


TRITON_UNDER_COMPILE = (
    "fastgan's Triton kernels are not used under torch.compile (on an H200 with torch 2.11 / Triton 3.6 "
    "a compiled minibatch discrimination + penalty step gave wrong gradients with them)")


def _trace_time_constant(fn):
    """``torch._dynamo.assume_constant_result``, which only marks ``fn`` (the attribute Dynamo reads,
    the same in torch 2.11 and 2.14; tests/test_torch_compile.py checks it): importing Dynamo to
    apply it would add seconds to ``import fastgan``."""
    fn._dynamo_marked_constant = True
    return fn


# Under torch.compile the backend is chosen once, when Dynamo traces the call (this function runs
# then, untraced, ``compiling`` being True): its answer depends on the environment (FASTGAN_IMPL, a
# built extension, Triton), not on tensor values, and tracing it would meet a lock (the extension's
# one-time load) and lru_caches, which break the graph.  Compiled, the CUDA backend's ops are opaque
# custom ops with fake kernels; the Triton backend's kernels would be traced into Inductor's graph,
# which got their gradients wrong (TRITON_UNDER_COMPILE), so auto then uses the reference ops, which
# Inductor fuses itself, and an explicit impl="triton" raises.
@_trace_time_constant
def _resolve(impl: Optional[str], device: torch.device, op: str, cuda_support: bool, compiling: bool) -> str:
    impl = requested_impl(impl)
    if impl == "ref":
        return "ref"
    if impl == "triton":
        reason = TRITON_UNDER_COMPILE + "; use impl='cuda' or 'auto'" if compiling else triton_reason_unusable(device)
        if reason:
            raise BackendUnavailableError(f"{op}: impl='triton' is unavailable: {reason}")
        return "triton"
    if impl == "cuda":
        reason = cuda_reason_unusable(device) if cuda_support else f"{op} has no CUDA kernels yet (use 'triton')"
        if reason:
            raise BackendUnavailableError(f"{op}: impl='cuda' is unavailable: {reason}")
        return "cuda"
    # auto
    if device.type != "cuda":
        return "ref"
    cuda_reason = cuda_reason_unusable(device) if cuda_support else f"{op} has no CUDA kernels yet"
    if cuda_reason is None:
        return "cuda"
    triton_reason = TRITON_UNDER_COMPILE if compiling else triton_reason_unusable(device)
    if not cuda_support and triton_reason is None:
        return "triton"  # a known gap, not a downgrade: no warning
    if triton_reason is None:
        _warn_once("auto-cuda", f"fastgan: CUDA extension unavailable ({cuda_reason}); "
                                "using the Triton kernels instead")
        return "triton"
    _warn_once("auto-triton" + ("-compile" if compiling else ""),
               f"fastgan: no fused backend for CUDA tensors (cuda: {cuda_reason}; triton: {triton_reason}); "
               "using the pure-PyTorch reference")
    return "ref"


def kernels(backend: str, op_module: str):
    """The module holding an op's kernels for a fast backend.

    Triton kernels live in ``fastgan.kernels.<op_module>``; CUDA kernels are
    registered as ``torch.ops.fastgan.<name>`` with the same names and
    signatures, so one autograd Function drives either.
    """
    if backend == "triton":
        return _triton_kernels(op_module)
    if backend == "cuda":
        return torch.ops.fastgan
    raise ValueError(f"no kernels for backend {backend!r}")


def _triton_kernels(op_module: str):
    # Import statements, not importlib.import_module: torch.compile's Dynamo traces an import
    # statement (it imports at trace time) but treats importlib as a graph break, which
    # torch.compile(fullgraph=True) of a fastgan op on the Triton backend rejects.
    if op_module == "batch_norm_act":
        from .kernels import batch_norm_act as module
    elif op_module == "penalty":
        from .kernels import penalty as module
    elif op_module == "minibatch_discrimination":
        from .kernels import minibatch_discrimination as module
    elif op_module == "virtual_stats_affine":
        from .kernels import virtual_stats_affine as module
    else:
        raise ValueError(f"no Triton kernel module {op_module!r}")
    return module
