"""Build script: pure Python always, plus the CUDA extension ``fastgan._C``
when torch and a CUDA toolkit are found.

Environment:
  FASTGAN_BUILD_CUDA=auto|0|1   auto (default): build when possible; 0: never; 1: must build
  TORCH_CUDA_ARCH_LIST          respected; default "8.0;9.0" (A100, H100/H200)
  CUDA_HOME                     the toolkit (e.g. /usr/local/cuda)
No GPU is needed to build.
"""
import glob
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")


class BuildPyWithSources(build_py):
    """Ship csrc/ inside the package so an install without the prebuilt
    extension can JIT-build it on first CUDA use."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "fastgan", "csrc")
        if os.path.isdir(CSRC):
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(CSRC, target, ignore=shutil.ignore_patterns("*.o", "build*"))


def cuda_extension_wanted():
    mode = os.environ.get("FASTGAN_BUILD_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"FASTGAN_BUILD_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return False
    try:
        import torch  # noqa: F401
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        if mode == "1":
            raise SystemExit("FASTGAN_BUILD_CUDA=1 but torch is not importable in the build "
                             "environment; install torch first and use --no-build-isolation")
        print("fastgan: torch not importable at build time: installing pure Python "
              "(the CUDA kernels will be JIT-built on first use)")
        return False
    if CUDA_HOME is None or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        if mode == "1":
            raise SystemExit(f"FASTGAN_BUILD_CUDA=1 but no nvcc under CUDA_HOME={CUDA_HOME!r}")
        print("fastgan: no CUDA toolkit found (set CUDA_HOME): installing pure Python")
        return False
    return True


ext_modules, cmdclass = [], {"build_py": BuildPyWithSources}
if cuda_extension_wanted():
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "*.cu")))
    ext_modules.append(CUDAExtension(
        name="fastgan._C",
        sources=sources,
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"]},
    ))

    class BuildExtensionDistinctObjects(BuildExtension):
        """An op's ``csrc/<op>.cpp`` (bindings) and ``csrc/<op>.cu`` (kernels) would
        both compile to ``<op>.o`` ("ninja: multiple rules generate ..."): name the
        CUDA objects ``<op>.cuda.o``, as ``torch.utils.cpp_extension.load`` does."""

        def build_extensions(self):
            default_names = self.compiler.object_filenames

            def object_filenames(source_filenames, *args, **kwargs):
                objects = default_names(source_filenames, *args, **kwargs)
                return [obj[: -len(".o")] + ".cuda.o" if src.endswith(".cu") and obj.endswith(".o") else obj
                        for src, obj in zip(source_filenames, objects)]

            self.compiler.object_filenames = object_filenames
            super().build_extensions()

    cmdclass["build_ext"] = BuildExtensionDistinctObjects.with_options(use_ninja=True)

setup(ext_modules=ext_modules, cmdclass=cmdclass)
