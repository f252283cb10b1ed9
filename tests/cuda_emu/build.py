"""Build fastgan's CUDA sources for the CPU emulator and load them as ``torch.ops.fastgan_emu``.

    python tests/cuda_emu/build.py        # build (cached) and list the ops

The kernels and launchers in ``csrc/*.cu`` are compiled as C++ against
``include/emu_runtime.h`` (the CUDA execution model, see there) and the
bindings in ``csrc/*.cpp`` against stand-ins for the few c10/cuda headers they
use.  The sources are copied and rewritten mechanically, never edited by hand:

* ``kernel<<<grid, block, smem, stream>>>(args)`` becomes
  ``::emu::launch(::emu::Config(grid, block, smem, stream), kernel, bound)(args)``,
  ``bound`` being the kernel's ``__launch_bounds__`` (1024 without one);
* ``__shared__ T name[n];`` becomes a function static filled with 0xFF bytes
  at the start of each block (``emu::poison_shared``);
* the build adds UBSan's alignment and array-bounds checks (a GPU would fault);
  with ``FASTGAN_EMU_ASAN=1`` AddressSanitizer too, in a build of its own, for
  accesses past a tensor (run it through ``asan.py``, which preloads ASan);
  with ``FASTGAN_EMU_STATIC_LIBSTDCXX=1`` libstdc++ linked in statically (the
  toolchain of the first GPU machine did that; see ``csrc/check.h``);
* in the bindings, the op namespace ``fastgan`` becomes ``fastgan_emu`` (in
  ``FASTGAN_OPS_NAMESPACE`` too, where ops call ops), the dispatch key CUDA
  becomes CPU (``is_cuda()`` checks become ``is_cpu()``),
  and ``at::empty`` / ``at::empty_like`` outputs start as NaN.

The result registers the very ops of ``fastgan._C`` -- same names, schemas and
checks -- for CPU tensors, next to (not instead of) the real extension.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent
CSRC = HERE.parents[1] / "csrc"
INCLUDE = HERE / "include"
NAMESPACE = "fastgan_emu"
# A GPU faults on a misaligned access (a 16-byte vector load at an 8-byte address) and on indexing
# past a shared array where a CPU reads on: UBSan's checks of both abort the process, with the
# source line, instead.
SANITIZE = ("-fsanitize=alignment,bounds", "-fno-sanitize-recover=all")
# FASTGAN_EMU_ASAN=1: AddressSanitizer too (a separate build), which catches a kernel reading or
# writing past a tensor; the Python process must then start with libasan preloaded (asan_env()).
ASAN_SANITIZE = ("-fsanitize=address,alignment,bounds", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer")
ASAN = os.environ.get("FASTGAN_EMU_ASAN", "0") not in ("", "0")
if ASAN:
    SANITIZE = ASAN_SANITIZE
# FASTGAN_EMU_STATIC_LIBSTDCXX=1: link libstdc++ into the library (a separate build), as the toolchain
# of the first GPU machine did; number formatting through that copy broke every check message with a
# number in it (a crash there, the number dropped here) until csrc/check.h formatted them itself.
STATIC_LIBSTDCXX = os.environ.get("FASTGAN_EMU_STATIC_LIBSTDCXX", "0") not in ("", "0")

_KERNEL_BOUNDS = re.compile(r"__global__\s+void\s+__launch_bounds__\(([^)]*)\)\s+(\w+)\s*\(")
# a kernel name with optional template arguments (one level of nested <...>), then <<<config>>>
_LAUNCH = re.compile(r"(\b[A-Za-z_]\w*)(\s*<(?:[^<>;]|<[^<>;]*>)*>)?\s*<<<(.*?)>>>", re.S)
_SHARED = re.compile(r"^(\s*)__shared__\s+([^;]*?)\s*\b(\w+)\s*((?:\[[^\]]*\]\s*)+);", re.M)


def kernel_bounds(paths) -> dict[str, str]:
    """{kernel name: its __launch_bounds__ expression} over the given device sources."""
    return {m.group(2): m.group(1) for path in paths for m in _KERNEL_BOUNDS.finditer(pathlib.Path(path).read_text())}


def rewrite_device(text: str, bounds: dict[str, str]) -> str:
    """A .cu / .cuh file for the emulator: launches and shared arrays."""

    def launch(m: re.Match) -> str:
        name, targs, config = m.group(1), m.group(2) or "", m.group(3)
        bound = bounds.get(name, "1024")
        return f"::emu::launch(::emu::Config({config}), {name}{targs}, {bound})"

    text = _LAUNCH.sub(launch, text)
    return _SHARED.sub(lambda m: f"{m.group(1)}static {m.group(2)} {m.group(3)}{m.group(4)}; "
                                 f"::emu::poison_shared({m.group(3)}, sizeof({m.group(3)}));", text)


def rewrite_binding(text: str) -> str:
    """A binding .cpp file for the emulator: the op namespace, dispatch key and allocations."""
    text = text.replace("TORCH_LIBRARY_FRAGMENT(fastgan,", f"TORCH_LIBRARY_FRAGMENT({NAMESPACE},")
    text = text.replace("TORCH_LIBRARY_IMPL(fastgan, CUDA,", f"TORCH_LIBRARY_IMPL({NAMESPACE}, CPU,")
    text = text.replace("TORCH_LIBRARY_IMPL(fastgan, Autograd,", f"TORCH_LIBRARY_IMPL({NAMESPACE}, Autograd,")
    # ops that call other ops through the dispatcher look them up in this namespace
    text = text.replace('#define FASTGAN_OPS_NAMESPACE "fastgan"', f'#define FASTGAN_OPS_NAMESPACE "{NAMESPACE}"')
    text = text.replace(".is_cuda()", ".is_cpu()")
    text = re.sub(r"\bat::empty_like\(", "::emu::empty_like(", text)
    text = re.sub(r"\bat::empty\(", "::emu::empty(", text)
    return '#include "emu_torch.h"\n' + text


MODULE = f"""// The emulator's op library (replaces csrc/module.cpp, which also makes a Python module).
#include <torch/library.h>
TORCH_LIBRARY({NAMESPACE}, m) {{ (void)m; }}
"""


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Writes the rewritten sources into out_dir; returns the files to compile."""
    out_dir.mkdir(parents=True, exist_ok=True)
    bounds = kernel_bounds(sorted(CSRC.glob("*.cu")) + sorted(CSRC.glob("*.cuh")))
    sources = []
    for path in sorted(CSRC.iterdir()):
        text = path.read_text()
        if path.name == "module.cpp":
            target, text = out_dir / "emu_module.cpp", MODULE
        elif path.suffix == ".cu":
            target, text = out_dir / f"{path.stem}_kernels.cpp", rewrite_device(text, bounds)
        elif path.suffix == ".cuh":
            target, text = out_dir / path.name, rewrite_device(text, bounds)
        elif path.suffix == ".cpp":
            target, text = out_dir / path.name, rewrite_binding(text)
        elif path.suffix == ".h":
            target = out_dir / path.name
        else:
            continue
        if "<<<" in text:
            raise RuntimeError(f"{path.name}: a kernel launch the emulator's rewrite did not recognise")
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
        if target.suffix == ".cpp":
            sources.append(target)
    return sources


def _inputs_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(list(CSRC.iterdir()) + list(INCLUDE.rglob("*.h")) + [pathlib.Path(__file__)]):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def load(verbose: bool = False):
    """Builds (once per source version) and loads the emulated ops; returns ``torch.ops.fastgan_emu``."""
    import torch
    from torch.utils import cpp_extension

    if hasattr(torch.ops, NAMESPACE) and hasattr(getattr(torch.ops, NAMESPACE), "norm_act_forward"):
        return getattr(torch.ops, NAMESPACE)
    key = _inputs_hash() + ("_asan" if ASAN else "") + ("_static_cxx" if STATIC_LIBSTDCXX else "")
    root = pathlib.Path(os.environ.get("FASTGAN_EMU_BUILD_DIR",
                                       pathlib.Path(cpp_extension._get_build_directory("fastgan_cuda_emu", False))))
    sources = generate(root / f"src_{key}")
    cpp_extension.load(
        name=f"fastgan_cuda_emu_{key}",
        sources=[str(s) for s in sources],
        extra_include_paths=[str(INCLUDE), str(sources[0].parent)],
        extra_cflags=["-O2", "-fno-strict-aliasing", *SANITIZE],
        # a new list: load() appends its own flags to it
        extra_ldflags=[*SANITIZE, *(["-static-libstdc++"] if STATIC_LIBSTDCXX else [])],
        is_python_module=False,
        verbose=verbose,
    )
    return getattr(torch.ops, NAMESPACE)


def defined_ops() -> set[str]:
    """The op names csrc/ defines (``m.def("name(...``)."""
    return {m.group(1) for path in CSRC.glob("*.cpp") for m in re.finditer(r'm\.def\(\s*"(\w+)\(', path.read_text())}


def registered_ops() -> set[str]:
    """The op names registered as torch.ops.fastgan_emu.* (after load())."""
    import torch

    prefix = f"{NAMESPACE}::"
    return {name[len(prefix):] for name in torch._C._dispatch_get_all_op_names() if name.startswith(prefix)}


if __name__ == "__main__":
    load(verbose="-v" in sys.argv)
    missing = defined_ops() - registered_ops()
    print(f"torch.ops.{NAMESPACE}: {len(registered_ops())} ops for CPU tensors: {sorted(registered_ops())}")
    if missing:
        sys.exit(f"not registered by the emulator build: {sorted(missing)}")
