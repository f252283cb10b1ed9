"""Every Triton kernel compiles for sm_90 (H100 / H200) and sm_80 (A100) with Triton's real compiler, no GPU needed.

The interpreter tests check what the kernels compute; they never compile them.
``fastgan.kernels.compile_check`` runs each op's three passes with launches
replaced by ahead-of-time compilation (TTIR -> PTX -> ptxas cubin) in the GPU's
launch configurations.  It runs in a subprocess: the interpreter, switched on
for this test session, must be off there.
"""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None
                                or importlib.util.find_spec("triton.backends.nvidia") is None,
                                reason="needs Triton with its CUDA backend (compiles without a GPU)")


def _env_without_interpreter() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _python(code_or_args, timeout=600, env=None):
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env or _env_without_interpreter(),
                          capture_output=True, text=True, timeout=timeout)


def test_every_kernel_compiles_for_sm90_and_sm80_without_spills(tmp_path):
    out = tmp_path / "report.json"
    proc = _python(["-m", "fastgan.kernels.compile_check", "--quick", "--arch", "90", "80", "--json", str(out)])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    report = json.loads(out.read_text())
    assert report["ok"] and not report["failures"] and not report["never_compiled"]
    compiled = {c["kernel"] for c in report["compiled"]}
    assert {"_stats_partial_kernel", "_grad_sums_kernel", "_pointwise_kernel", "_mbd_grad_kernel",
            "_row_partials_kernel", "_penalty_backward_kernel", "_stats_affine_kernel", "_group_stats_affine_kernel",
            "_double_coefficients_kernel", "_backward_coefficients_kernel", "_stats_finalize_kernel"} <= compiled
    # channel_stats_affine's merge kernel with its stats_affine epilogue, and the plain one
    assert {c["config"].get("AFFINE") for c in report["compiled"] if c["kernel"] == "_stats_finalize_kernel"} == {
        True, False}
    assert {c["arch"] for c in report["compiled"]} == {80, 90}
    # the 64-bit index variants (tensors of 2**31+ elements) are compiled too
    index_64 = {c["kernel"] for c in report["compiled"] if c["config"].get("INDEX_64") is True}
    assert {"_stats_partial_kernel", "_grad_sums_kernel", "_pointwise_kernel", "_interp_kernel"} <= index_64
    # GPU launch configurations, not the interpreter's: the widest batch-norm tile runs on 8 warps
    assert any(c["kernel"] == "_pointwise_kernel" and c["config"].get("BLOCK_M") == 2048 and c["num_warps"] == 8
               for c in report["compiled"])
    # the norm kernels recompute z = x * scale + shift without fused multiply-adds (the activation's kink
    # must tie exactly where eager PyTorch's does); the option really reaches the compiler
    for c in report["compiled"]:
        if c["kernel"] in ("_pointwise_kernel", "_grad_sums_kernel"):
            assert c["config"].get("enable_fp_fusion") is False and c["fma_instructions"] == 0, c
    assert any(c["fma_instructions"] > 0 for c in report["compiled"])  # elsewhere fma is used (the count works)
    if report["resource_usage_read"]:
        assert all(c["registers"] for c in report["compiled"])
        assert report["spilling"] == []


def _interpreter_broken() -> bool:
    from fastgan import _backend

    return _backend.interpreter_incompatibility() is not None


BROKEN_KERNEL = textwrap.dedent("""
    import torch, triton, triton.language as tl

    @triton.jit
    def widening_kernel(x_ptr, n, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        for t in range(0, n, BLOCK):
            i = (t + tl.arange(0, BLOCK)).to(tl.int64)  # a loop-carried value changes type
        tl.store(x_ptr + i, 1.0, mask=i < n)
""")


@pytest.mark.skipif(importlib.util.find_spec("triton") is not None and _interpreter_broken(),
                    reason="this Triton's interpreter can't run with this numpy (see fastgan._backend)")
def test_compile_check_catches_what_the_interpreter_accepts(tmp_path):
    # Triton reads a kernel's source from its file: the scripts are files, not -c strings
    interpreted_script = tmp_path / "interpreted.py"
    interpreted_script.write_text(BROKEN_KERNEL + "widening_kernel[(1,)](torch.zeros(64), 64, BLOCK=16)\nprint('ran')\n")
    interpreted = _python([str(interpreted_script)], env=dict(_env_without_interpreter(), TRITON_INTERPRET="1"),
                          timeout=300)
    assert interpreted.returncode == 0 and "ran" in interpreted.stdout, interpreted.stderr[-3000:]
    compiled_script = tmp_path / "compiled.py"
    compiled_script.write_text(BROKEN_KERNEL + textwrap.dedent("""
        from fastgan.kernels.compile_check import _Recorder, compile_only
        from triton.compiler.errors import CompilationError
        with compile_only(90, 132, _Recorder()):
            try:
                widening_kernel[(1,)](torch.zeros(64), 64, BLOCK=16)
            except CompilationError as exc:
                print('refused:', 'Loop-carried variable' in str(exc))
    """))
    compiled = _python([str(compiled_script)], timeout=300)
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    assert "refused: True" in compiled.stdout, compiled.stdout + compiled.stderr[-3000:]


def test_compile_check_refuses_the_interpreter():
    env = dict(_env_without_interpreter(), TRITON_INTERPRET="1")
    proc = _python(["-m", "fastgan.kernels.compile_check", "--quick"], env=env, timeout=300)
    assert proc.returncode == 2 and "TRITON_INTERPRET" in proc.stderr
