"""Loading the CUDA extension ``fastgan._C``: prebuilt, else JIT-built once.

``setup.py`` builds ``fastgan._C`` when a CUDA toolkit is present.  If it is
missing (pure-Python install, or an install made without nvcc) the sources
shipped in ``fastgan/csrc`` (or the repository's ``csrc/``) are compiled on
first CUDA use with ``torch.utils.cpp_extension.load``, cached under a name
keyed by a hash of the sources so an edited kernel is rebuilt.  A failed
build warns once and the dispatcher falls back; ``FASTGAN_STRICT=1`` makes it
raise instead.
"""
from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import threading

import torch

_lock = threading.Lock()
_state: dict = {}


def source_dir() -> pathlib.Path | None:
    """Where the C++/CUDA sources are: packaged copy first, then the checkout."""
    here = pathlib.Path(__file__).resolve().parent
    for candidate in (here / "csrc", here.parent / "csrc"):
        if candidate.is_dir() and any(candidate.glob("*.cu")):
            return candidate
    return None


def sources() -> list[pathlib.Path]:
    root = source_dir()
    if root is None:
        return []
    return sorted(p for p in root.iterdir() if p.suffix in (".cpp", ".cu"))


def source_hash() -> str:
    digest = hashlib.sha256()
    root = source_dir()
    if root is None:
        return "none"
    for path in sorted(p for p in root.iterdir() if p.suffix in (".cpp", ".cu", ".h", ".cuh")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def strict() -> bool:
    return os.environ.get("FASTGAN_STRICT", "0") not in ("", "0")


def _import_prebuilt() -> tuple[bool, str]:
    try:
        from . import _C  # noqa: F401  (importing registers torch.ops.fastgan.*)
    except ImportError as exc:
        return False, f"fastgan._C is not built ({exc})"
    return True, "fastgan._C prebuilt"


def _jit_build() -> tuple[bool, str]:
    if os.environ.get("FASTGAN_JIT", "1") in ("0", ""):
        return False, "fastgan._C is not built and FASTGAN_JIT=0 disables the JIT build"
    srcs = sources()
    if not srcs:
        return False, "fastgan._C is not built and no CUDA sources are shipped for a JIT build"
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is None:
        return False, "fastgan._C is not built and no CUDA toolkit (CUDA_HOME) for a JIT build"
    name = f"fastgan_C_{source_hash()}"
    try:
        cpp_extension.load(
            name=name,
            sources=[str(p) for p in srcs],
            extra_cflags=["-O3"],
            # setup.py's flags: no --use_fast_math, whose approximate division and sqrt (and flushed
            # denormals) would make a JIT-built extension round differently from an installed one
            extra_cuda_cflags=["-O3", "-lineinfo"],
            is_python_module=False,
            verbose=os.environ.get("FASTGAN_VERBOSE_BUILD", "0") == "1",
        )
    except Exception as exc:
        return False, f"JIT build of fastgan._C failed ({exc.__class__.__name__}: {str(exc)[:300]})"
    return True, f"fastgan._C JIT-built ({name})"


def load(allow_jit: bool = True) -> tuple[bool, str]:
    """(loaded, how or why not).  Tries once; the answer is cached."""
    result = _state.get("result")
    if result is not None:  # every CUDA-backend call asks: no lock once the answer is known
        return result
    with _lock:
        if "result" in _state:
            return _state["result"]
        ok, reason = _import_prebuilt()
        if not ok and allow_jit and torch.cuda.is_available():
            ok, reason = _jit_build()
        elif not ok and not torch.cuda.is_available():
            reason += "; no CUDA device for a JIT build"
        if not ok and strict():
            raise RuntimeError(f"FASTGAN_STRICT=1: {reason}")
        if ok:
            # meta kernels for torch.compile, one module per op family
            from .ops import _fake, _fake_minibatch, _fake_penalty, _fake_stats_affine  # noqa: F401
        _state["result"] = (ok, reason)
        return ok, reason


@functools.lru_cache(maxsize=None)
def prebuilt_available() -> bool:
    """Whether ``fastgan._C`` imports (without trying a JIT build)."""
    return _import_prebuilt()[0]
