"""The CPU emulator that runs the CUDA backend's kernels without a GPU (tests/cuda_emu).

The ``cuda-emu`` cases of the op tests trust it to execute ``csrc/`` as CUDA
would and to fail where CUDA would; these tests hold it to that on purpose-built
kernels (tests/cuda_emu/selftest.cu, put through the same source rewrite as
``csrc/``): barriers, warp shuffles, races made visible, shared memory that
starts as garbage, launch-configuration errors, and __half / __nv_bfloat16
conversions bit for bit against torch's.
"""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import cuda_emu_skip_reason
from cuda_emu import build

pytestmark = pytest.mark.skipif(cuda_emu_skip_reason() is not None, reason=cuda_emu_skip_reason() or "")

HERE = pathlib.Path(__file__).resolve().parent / "cuda_emu"


def compile_selftest(out: pathlib.Path, sanitize=build.SANITIZE) -> pathlib.Path:
    """selftest.cu through the emulator's rewrite, compiled with ``sanitize``; returns the binary."""
    source = out / "selftest.cpp"
    source.write_text(build.rewrite_device((HERE / "selftest.cu").read_text(), build.kernel_bounds([HERE / "selftest.cu"])))
    binary = out / "selftest"
    compiler = shutil.which("c++") or shutil.which("g++")
    subprocess.run([compiler, "-std=c++17", "-O1", *sanitize, f"-I{build.INCLUDE}", str(source), "-o",
                    str(binary)], check=True, capture_output=True, text=True)
    return binary


@pytest.fixture(scope="module")
def selftest(tmp_path_factory):
    """The self-test program, rewritten and compiled; returns a runner of its modes."""
    binary = compile_selftest(tmp_path_factory.mktemp("cuda_emu"))

    def run(*args, ok=True):
        done = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=120)
        if not ok:
            return done
        assert done.returncode == 0, done.stderr
        return done.stdout

    return run


@pytest.fixture(scope="module")
def kernel_results(selftest):
    return dict(line.split(" ", 1) for line in selftest("kernels").splitlines())


@pytest.mark.parametrize("case,expected", [
    ("tree_sum", "ok"),
    ("warp_sum", "ok"),
    ("indexing", "ok"),
    ("divergent_barrier", "detected"),
    ("partial_warp_shuffle", "detected"),
    ("unwritten_shared", "nan"),
    ("empty_grid", "invalid_configuration"),
    ("block_over_1024", "invalid_configuration"),
    ("grid_y_over_65535", "invalid_configuration"),
    ("over_launch_bounds", "out_of_resources"),
    ("within_launch_bounds", "ok"),
])
def test_execution_model(kernel_results, case, expected):
    assert kernel_results[case] == expected


def test_missing_barrier_shows_as_stale_reads(kernel_results):
    """Threads of a block run in a shuffled order: a read of a slot another thread writes, with
    no barrier between, sees the slot's poisoned value for some thread (on a GPU: a race)."""
    assert kernel_results["missing_barrier"] == "ok:stale_reads"


@pytest.mark.parametrize("which,message", [("misaligned", "misaligned address"),
                                           ("shared_overflow", "out of bounds for type 'float [32]'")])
def test_accesses_a_gpu_faults_on_abort(selftest, which, message):
    """A misaligned vector load and an index past a shared array stop the run with the source line
    (the emulator's build adds UBSan's checks), as a GPU would fault, instead of reading on."""
    done = selftest("fault", which, ok=False)
    assert done.returncode != 0 and "no_fault" not in done.stdout
    assert message in done.stderr and "selftest.cpp" in done.stderr, done.stderr


def test_address_sanitizer_build_catches_a_read_past_a_buffer(tmp_path):
    """Under FASTGAN_EMU_ASAN=1 (``tests/cuda_emu/asan.py``) a kernel reading past its input -- which
    the plain emulator cannot see -- stops with ASan's report."""
    from cuda_emu import asan

    if asan.unavailable_reason() is not None:
        pytest.skip(asan.unavailable_reason())
    binary = compile_selftest(tmp_path, build.ASAN_SANITIZE)

    def run(*args):
        return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "ASAN_OPTIONS": "detect_leaks=0"})

    done = run("fault", "global_overflow")
    assert done.returncode != 0 and "no_fault" not in done.stdout
    assert "AddressSanitizer: heap-buffer-overflow" in done.stderr and "global_overflow_kernel" in done.stderr, \
        done.stderr[-3000:]
    clean = run("kernels")
    assert clean.returncode == 0 and "AddressSanitizer" not in clean.stderr, clean.stderr[-3000:]


# The emulated cases CI runs under ASan: all of them but the large shapes and the float64 gradchecks
# (about 1.5 of their 5 minutes under ASan; `python tests/cuda_emu/asan.py` runs every one).
ASAN_SELECTION = ["-m", "cuda_emu", "-k", "not primitives_large and not gradcheck_gradgradcheck_float64"]


def test_csrc_kernels_stay_in_bounds_under_address_sanitizer():
    """The emulated cases again, with csrc/ built under AddressSanitizer: no kernel reads or writes
    outside the tensors it is given (about 4 minutes to build, 1.5 to run)."""
    from cuda_emu import asan

    if asan.unavailable_reason() is not None:
        pytest.skip(asan.unavailable_reason())
    if os.environ.get("FASTGAN_EMU_ASAN", "0") not in ("", "0"):
        pytest.skip("this process already runs the ASan build")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ASAN_SELECTION],
                          cwd=asan.ROOT, env=asan.asan_env(), capture_output=True, text=True, timeout=2400)
    out = done.stdout + done.stderr
    assert "AddressSanitizer" not in out, out[-6000:]
    assert done.returncode == 0, out[-6000:]
    assert " passed" in out and " failed" not in out, out[-3000:]


def test_rewrite_leaves_no_launch_syntax():
    sources = sorted(build.CSRC.glob("*.cu"))
    bounds = build.kernel_bounds(sources)
    for path in sources:
        text = build.rewrite_device(path.read_text(), bounds)
        assert "<<<" not in text and "__shared__" not in text, path.name
        assert "::emu::launch(" in text, path.name


def test_half_conversions_match_torch_bit_for_bit(selftest, tmp_path):
    specials = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 65504.0, 65519.99, 65520.0, 6.1035156e-05,
                             5.9604645e-08, 2.9802322e-08, 2.9802326e-08, 1e-10, 3.3895314e38, 3.4e38, 1.0 + 2**-11,
                             1.0 + 3 * 2**-11, 1.0 + 2**-8, 1.0 + 3 * 2**-8])
    gen = torch.Generator().manual_seed(0)
    random_bits = torch.randint(-2**31, 2**31 - 1, (200_000,), generator=gen, dtype=torch.int64).to(torch.int32)
    values = torch.cat([specials, random_bits.view(torch.float32), torch.randn(50_000, generator=gen) * 1e3])
    values = values[~values.isnan()]  # NaN payloads may differ; NaN-ness is checked below
    values = torch.cat([values, torch.tensor([float("nan")])])
    (tmp_path / "in.bin").write_bytes(values.numpy().tobytes())
    selftest("convert", tmp_path / "in.bin", tmp_path / "out.bin")
    raw = (tmp_path / "out.bin").read_bytes()
    n = values.numel()
    bits = torch.frombuffer(bytearray(raw[: 4 * n]), dtype=torch.int16)
    widened = torch.frombuffer(bytearray(raw[4 * n:]), dtype=torch.float32)
    half, bf16 = bits[:n].view(torch.float16), bits[n:].view(torch.bfloat16)
    finite = ~values.isnan()
    assert torch.equal(half[finite].view(torch.int16), values[finite].to(torch.float16).view(torch.int16))
    assert torch.equal(bf16[finite].view(torch.int16), values[finite].to(torch.bfloat16).view(torch.int16))
    assert half[-1].isnan() and bf16[-1].isnan()
    patterns = torch.arange(65536, dtype=torch.int32).to(torch.int16)
    for got, dtype in ((widened[:65536], torch.float16), (widened[65536:], torch.bfloat16)):
        expected = patterns.view(dtype).float()
        assert torch.equal(got.isnan(), expected.isnan())
        assert torch.equal(got[~got.isnan()].view(torch.int32), expected[~expected.isnan()].view(torch.int32))


def test_every_csrc_op_runs_on_the_emulator():
    """The emulator build registers every op csrc/ defines (the cuda-emu cases would otherwise fail
    on a missing op, or worse, never reach it)."""
    from conftest import emulated_cuda_ops

    emulated_cuda_ops()
    defined = build.defined_ops()
    assert len(defined) >= 20 and defined == build.registered_ops()
