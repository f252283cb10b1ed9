"""Compile every Triton kernel for a real GPU, on a machine without one.

    python -m fastgan.kernels.compile_check [--arch 90 80] [--sms 132] [--quick] [--json FILE]

The interpreter (``TRITON_INTERPRET=1``, how CI runs the kernels) never
compiles them: it accepts code that Triton's compiler refuses (a loop-carried
value changing type, a constexpr used as a tensor, an op a Triton version
lacks), and it runs other launch configurations than a GPU gets.  This
command runs each op -- forward, backward and double backward, every dtype,
layout and launch configuration a GPU would get -- through ``impl="triton"``
with kernel launches replaced by ahead-of-time compilation for the target
(Triton's whole pipeline: TTIR, TTGIR, LLVM, PTX, ``ptxas`` to a cubin).
Nothing is executed, so results are garbage and never looked at; what is
checked is that every launch compiles, that every kernel in
``fastgan.kernels`` was compiled at least once, and that none spills
registers to local memory (from ``cuobjdump --dump-resource-usage`` on the
cubin, where a cuobjdump is found).  Index-width variants the test sizes
don't reach (``INDEX_64``, for tensors of 2**31 elements or more) are
compiled too, by re-compiling each recorded launch with the flag set.

Exit status 0 when all compiled without spills, 1 otherwise, 2 when it can't
run (the interpreter is on, or Triton has no CUDA backend).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch

from . import _target
from .compile_cases import all_cases

KERNEL_MODULES = ("batch_norm_act", "stats_affine", "double_coefficients", "minibatch_discrimination", "penalty")


@dataclass
class Compiled:
    """One compiled specialization of a kernel."""
    kernel: str
    arch: int
    config: dict
    num_warps: int
    shared_bytes: int
    registers: Optional[int] = None
    local_bytes: Optional[int] = None
    stack_bytes: Optional[int] = None
    fma_instructions: int = 0  # fused multiply-adds in the PTX (kernels compiled with enable_fp_fusion=False: 0)
    cases: list = field(default_factory=list)

    def spills(self) -> bool:
        return bool(self.local_bytes) or bool(self.stack_bytes)


class _CompileOnlyDriver:
    """Stands in for Triton's CUDA driver: names the target, never touches a GPU.

    The "device" number is the arch, so JITFunction's per-device caches keep
    each target's binaries apart."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.arch = arch
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return self.arch

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


class _Recorder:
    def __init__(self):
        self.compiled: dict[int, Compiled] = {}
        self.binaries: dict[int, bytes] = {}
        self.launches: dict[tuple, tuple] = {}  # first launch of each (kernel, arch, config): (jit fn, args, kwargs)
        self.case = "?"
        self.arch = 0

    def record(self, jit_fn, compiled_kernel, args, kwargs):
        name = jit_fn.fn.__name__
        config = {k: v for k, v in kwargs.items() if k not in ("num_warps", "num_stages", "grid")}
        key = id(compiled_kernel)
        if key not in self.compiled:
            meta = compiled_kernel.metadata
            ptx = compiled_kernel.asm.get("ptx", "")
            self.compiled[key] = Compiled(name, self.arch, config, int(meta.num_warps), int(meta.shared),
                                          fma_instructions=len(re.findall(r"\bfma\.", ptx)))
            self.binaries[key] = compiled_kernel.asm.get("cubin", b"")
        entry = self.compiled[key]
        if self.case not in entry.cases:
            entry.cases.append(self.case)
        launch_key = (name, self.arch, tuple(sorted(config.items())))
        self.launches.setdefault(launch_key, (jit_fn, args, kwargs))


@contextmanager
def compile_only(arch: int, sms: int, recorder: _Recorder):
    """Within: CPU tensors take ``impl="triton"``, sized for a GPU of ``sms`` SMs, and each kernel
    launch compiles for ``sm_<arch>`` instead of running."""
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    original_run = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        kernel = original_run(self, *args, grid=grid, warmup=True, **kwargs)
        recorder.record(self, kernel, args, kwargs)
        return kernel

    previous = driver._active  # None until a driver was built (building one needs a GPU driver)
    driver.set_active(_CompileOnlyDriver(arch))
    JITFunction.run = run
    _target.compile_only = sms
    recorder.arch = arch
    try:
        yield
    finally:
        _target.compile_only = None
        JITFunction.run = original_run
        driver._active = previous


def _compile_index_64_variants(recorder: _Recorder, failures: list) -> None:
    """Re-compile every recorded launch that had INDEX_64=False with INDEX_64=True."""
    for (name, arch, config), (jit_fn, args, kwargs) in list(recorder.launches.items()):
        if dict(config).get("INDEX_64") is not False or arch != recorder.arch:
            continue
        recorder.case = f"{name} INDEX_64=True"
        try:
            jit_fn.run(*args, grid=(1,), warmup=True, **{**kwargs, "INDEX_64": True})
        except Exception as exc:
            failures.append({"case": recorder.case, "arch": arch, "error": _short(exc)})


def _short(exc: BaseException) -> str:
    lines = traceback.format_exception_only(type(exc), exc)
    text = "".join(lines).strip()
    return text if len(text) < 4000 else text[:4000] + " ..."


def launchable_kernels() -> dict[str, str]:
    """Every kernel (a @triton.jit function named ``*_kernel``) in fastgan.kernels: name -> module."""
    import importlib

    from triton.runtime.jit import JITFunction

    found = {}
    for module_name in KERNEL_MODULES:
        module = importlib.import_module(f"fastgan.kernels.{module_name}")
        for attr, value in vars(module).items():
            if isinstance(value, JITFunction) and attr.endswith("_kernel"):
                found[value.fn.__name__] = module_name
    return found


# ----------------------------------------------------------------------------- resource usage

_USAGE = re.compile(r"Function (\S+):\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def find_cuobjdump() -> Optional[str]:
    import triton

    candidates = [os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")]
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home:
        candidates.append(os.path.join(cuda_home, "bin", "cuobjdump"))
    candidates.append(shutil.which("cuobjdump") or "")
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def read_resource_usage(recorder: _Recorder, cuobjdump: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for key, entry in recorder.compiled.items():
            binary = recorder.binaries.get(key)
            if not binary:
                continue
            path = os.path.join(tmp, f"{key}.cubin")
            with open(path, "wb") as f:
                f.write(binary)
            out = subprocess.run([cuobjdump, "--dump-resource-usage", path], capture_output=True, text=True,
                                 timeout=60).stdout
            m = _USAGE.search(out)
            if m:
                entry.registers, entry.stack_bytes, entry.local_bytes = int(m[2]), int(m[3]), int(m[5])


# ----------------------------------------------------------------------------- driver


def check(archs=(90,), sms: int = 132, quick: bool = False, log: Callable[[str], None] = print) -> dict:
    """Compile every case for every arch; returns the report (see ``main``)."""
    import triton

    recorder = _Recorder()
    failures: list = []
    cases = all_cases(quick)
    t0 = time.monotonic()
    for arch in archs:
        with compile_only(arch, sms, recorder):
            for name, run_case in cases:
                recorder.case = name
                try:
                    run_case()
                except Exception as exc:
                    failures.append({"case": name, "arch": arch, "error": _short(exc)})
            _compile_index_64_variants(recorder, failures)
        log(f"sm_{arch}: {sum(c.arch == arch for c in recorder.compiled.values())} kernel specializations "
            f"compiled ({time.monotonic() - t0:.0f} s so far)")
    cuobjdump = find_cuobjdump()
    if cuobjdump:
        read_resource_usage(recorder, cuobjdump)
    compiled_names = {c.kernel for c in recorder.compiled.values()}
    never = sorted(set(launchable_kernels()) - compiled_names)
    entries = sorted(recorder.compiled.values(), key=lambda c: (c.arch, c.kernel, str(c.config)))
    spilling = [c for c in entries if c.spills()]
    return {
        "triton": triton.__version__, "torch": torch.__version__, "archs": list(archs), "sms": sms,
        "quick": quick, "seconds": round(time.monotonic() - t0, 1),
        "cases": len(cases), "compiled": [asdict(c) for c in entries],
        "failures": failures, "never_compiled": never,
        "spilling": [f"{c.kernel} sm_{c.arch} {c.config}" for c in spilling],
        "resource_usage_read": cuobjdump is not None,
        "ok": not failures and not never and not spilling,
    }


def format_report(report: dict) -> str:
    lines = [f"Triton {report['triton']}, torch {report['torch']}, targets "
             + ", ".join(f"sm_{a}" for a in report["archs"]) + f", sized for {report['sms']} SMs"
             + (" (quick)" if report["quick"] else ""),
             f"{report['cases']} cases, {len(report['compiled'])} kernel specializations compiled "
             f"in {report['seconds']} s", ""]
    by_kernel: dict = {}
    for c in report["compiled"]:
        by_kernel.setdefault((c["kernel"], c["arch"]), []).append(c)
    lines.append(f"{'kernel':<28} {'arch':>5} {'variants':>8} {'regs max':>8} {'local max':>9} {'shared max':>10}")
    for (kernel, arch), group in sorted(by_kernel.items()):
        regs = [c["registers"] for c in group if c["registers"] is not None]
        local = [(c["local_bytes"] or 0) + (c["stack_bytes"] or 0) for c in group]
        lines.append(f"{kernel:<28} {'sm_' + str(arch):>5} {len(group):>8} {max(regs) if regs else '?':>8} "
                     f"{max(local):>9} {max(c['shared_bytes'] for c in group):>10}")
    if not report["resource_usage_read"]:
        lines.append("(no cuobjdump found: registers and spills not read)")
    for f in report["failures"]:
        lines += ["", f"FAILED {f['case']} (sm_{f['arch']}):", f["error"]]
    if report["never_compiled"]:
        lines += ["", "never compiled (no case reaches them): " + ", ".join(report["never_compiled"])]
    if report["spilling"]:
        lines += ["", "spilling registers to local memory:"] + [f"  {s}" for s in report["spilling"]]
    lines += ["", "OK" if report["ok"] else "FAILED"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastgan.kernels.compile_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90],
                        help="compute capabilities to compile for, as 90 for sm_90 (default: 90)")
    parser.add_argument("--sms", type=int, default=132, help="size launches for a GPU with this many SMs (H100/H200: 132)")
    parser.add_argument("--quick", action="store_true", help="float32 and bfloat16 only, fewer shapes")
    parser.add_argument("--json", help="write the full report (every specialization) to this file")
    args = parser.parse_args(argv)
    from .. import _backend

    if _backend.interpreter_enabled():
        print("compile_check: TRITON_INTERPRET is set; unset it (the interpreter never compiles)", file=sys.stderr)
        return 2
    try:
        import triton.backends.nvidia  # noqa: F401
    except Exception as exc:
        print(f"compile_check: Triton's CUDA backend is not importable ({exc})", file=sys.stderr)
        return 2
    report = check(tuple(args.arch), args.sms, args.quick)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, default=str)
    print(format_report(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
