"""Run tests with the CUDA emulator built under AddressSanitizer.

    python tests/cuda_emu/asan.py [pytest arguments]     (default: -m cuda_emu, every emulated case)

The emulator runs a kernel's loads and stores as plain C++ on the tensors' CPU
memory, so a kernel that reads or writes past a tensor would go unnoticed (it
touches the heap next to it) where a GPU may fault or silently corrupt.  With
``FASTGAN_EMU_ASAN=1`` ``build.py`` compiles the emulated ops with
``-fsanitize=address`` (a separate build, ~4 min); ASan's runtime must then be
the first library in the process, so pytest runs in a child process with
``libasan`` (and ``libstdc++``, whose exceptions ASan intercepts) preloaded.
An out-of-bounds access stops the run with ASan's report: the kernel, the
access and the tensor's allocation.  Leak checking is off (Python's own
allocations would fill the report).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _runtime_library(name: str) -> str | None:
    """The host compiler's copy of a runtime library (what the emulated ops are linked against)."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        return None
    try:
        path = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return path if path and os.path.isabs(path) and os.path.exists(path) else None


def unavailable_reason() -> str | None:
    """Why the ASan run cannot happen here (None when it can)."""
    if _runtime_library("libasan.so") is None:
        return "no libasan for the host compiler (install the compiler's AddressSanitizer runtime)"
    if _runtime_library("libstdc++.so.6") is None:
        return "no libstdc++.so.6 found next to the host compiler"
    return None


def asan_env(base: dict | None = None) -> dict:
    """``base`` (default: this process's environment) set up for the ASan build of the emulator."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"cannot run the emulator under AddressSanitizer: {reason}")
    env = dict(os.environ if base is None else base)
    env["LD_PRELOAD"] = " ".join(filter(None, [_runtime_library("libasan.so"), _runtime_library("libstdc++.so.6"),
                                               env.get("LD_PRELOAD")]))
    env["ASAN_OPTIONS"] = ":".join(filter(None, ["detect_leaks=0", "halt_on_error=1", env.get("ASAN_OPTIONS")]))
    env["FASTGAN_EMU_ASAN"] = "1"
    env.pop("FASTGAN_TEST_CUDA_EMU", None)  # the emulated cases must run
    return env


def main(argv: list[str]) -> int:
    args = argv or ["-m", "cuda_emu"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    return subprocess.run(cmd, cwd=ROOT, env=asan_env()).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
