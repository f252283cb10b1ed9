"""Shared machinery of the fastgan benchmark suites (``benchmarks/bench_*.py``).

Run them with ``pytest benchmarks`` (``python_files`` in pyproject.toml
collects ``bench_*.py``).  ``python benchmarks/gpu_suite.py`` runs every
``bench_*.py`` file on a GPU and summarises the records described below; a new
suite that follows this page is picked up with no change to the GPU suite.

Device and modes
----------------
* ``FASTGAN_BENCH_DEVICE=auto|cuda|cpu`` (default ``auto``: CUDA when a GPU is
  visible).  On CUDA the suites run at real sizes and are timed.
* On CPU they run in *smoke mode*: tiny shapes, each case executed a handful of
  times at most, so CI checks that the suites still run (the whole CPU smoke run
  takes seconds).  Fastgan is benchmarked through ``ref``; the Triton kernels
  run on one tiny shape under the interpreter only when ``TRITON_INTERPRET=1``
  is set (this conftest does not set it); ``torch.compile`` uses the ``eager``
  backend (Dynamo tracing without Inductor's C++/Triton code generation).
* ``pytest benchmarks --benchmark-disable`` runs every case exactly once and
  times nothing; the default (enabled) mode times as below.

Timing and memory
-----------------
* CUDA: ``triton.testing.do_bench`` (L2 flushed before every run, CUDA events,
  median), or an equivalent CUDA-event loop when Triton is missing.
  ``FASTGAN_BENCH_WARMUP_MS`` / ``FASTGAN_BENCH_REP_MS`` (default 5 / 25) set
  its warm-up and measuring windows (25 ms is hundreds of runs of these
  kernels, and keeps the GPU suite inside its time budget).  pytest-benchmark's own (synchronised
  wall-clock) statistics come from a few ``pedantic`` rounds and are secondary.
* CPU smoke: the median of pytest-benchmark's wall-clock rounds.
* CUDA runs set ``torch.backends.cudnn.benchmark = True`` (cuDNN times its convolution algorithms
  once per shape, in the warm-up) for fastgan and the baselines alike, as a training run on a GPU
  has it; ``FASTGAN_BENCH_CUDNN_BENCHMARK=0`` leaves cuDNN's heuristics (the first GPU run, session
  20, had them).
* Peak memory (CUDA only): ``torch.cuda.max_memory_allocated()`` during one call
  (after ``reset_peak_memory_stats``) minus what was allocated before it, so
  inputs that already exist are not counted; the call's outputs, saved tensors
  and temporaries are.

Record schema (``benchmark.extra_info``, schema 1)
--------------------------------------------------
Every case is measured with the ``bench`` fixture, which writes these keys into
``benchmark.extra_info`` (so they land in ``--benchmark-json``) and, when
``FASTGAN_BENCH_RECORD=FILE`` is set, appends the same record as one JSON line to
FILE as soon as the case finishes (a time-limited run keeps what it finished):

``schema``        1
``op``            the operation, e.g. ``"batch_norm_act"``; ``"device_copy"`` for
                  the copy-bandwidth reference
``case``          what is timed: ``"forward"``, ``"forward_backward"``,
                  ``"double_backward"`` (grad with ``create_graph=True``, a
                  penalty-like scalar, then its backward), ``"pass:<name>"`` (a
                  single kernel pass), ``"copy"``
``shape``         list of ints (the main input)
``dtype``         ``"float32"``, ``"bfloat16"``, ...
``impl``          ``"cuda"``, ``"triton"``, ``"ref"`` (fastgan), ``"eager"``,
                  ``"compile"`` (PyTorch baselines), ``"copy"``
``baseline``      true for PyTorch reference measurements (eager, compile, copy)
``variant``       free label distinguishing cases with the same key (e.g. the
                  DCGAN layers that have this shape); may be ``""``
``device``        device name; ``smoke``: true on CPU smoke runs
``median_ms``     median time per call in ms (None with ``--benchmark-disable``)
``timer``         ``"do_bench"``, ``"cuda_events"``, ``"wall"`` or None
``wall_median_ms`` pytest-benchmark's synchronised wall-clock median, or None
``peak_mem_mb``   peak memory of one call in MiB (None on CPU)
``host_ms``       median host time to issue one call (Python, dispatch and launches, the GPU
                  drained before and not waited on within), in ms; None on CPU.  Near
                  ``median_ms`` the case is bound by the host, not by the GPU
``bytes_moved``   bytes a pass must read + write at least (None if not given)
``bandwidth_gbps`` ``bytes_moved / median`` in GB/s (1e9 bytes/s), or None
``targets``       optional goals the GPU suite checks: ``{"vs_eager": 1.5,
                  "vs_compile": 1.0, "copy_fraction": 0.8}``
``notes``         optional free text
``plain_variant`` optional: the variant of the same case run without the
                  record's special mode (e.g. ``"dcgan64"`` for a
                  ``"dcgan64-graph"`` record, the step captured in a CUDA
                  graph); the GPU suite then also reports ``vs_eager_plain``,
                  the plain eager time over this record's time

The GPU suite compares each fastgan record with the ``eager`` and ``compile``
records of the same (op, case, shape, dtype, variant), and a record with
``bandwidth_gbps`` with the ``copy`` record of the same shape and dtype.

Parametrisation helpers (fixtures ``impl``, ``shape``, ``dtype``)
-----------------------------------------------------------------
A bench module defines ``SHAPES`` (real sizes: a list of shapes or of
``(label, shape)`` pairs) and optionally ``SMOKE_SHAPES``, ``DTYPES``,
``SMOKE_DTYPES``; a test that takes ``shape`` / ``dtype`` / ``impl`` arguments is
parametrised from them for the current device.  ``impl`` ranges over the
fastgan backends that can run here (CUDA: ``cuda``, ``triton``; CPU smoke:
``ref``, plus ``triton`` under the interpreter on the first smoke shape and
dtype only) and the baselines; ``@pytest.mark.impls("fastgan", "eager")``
restricts it (groups: ``fastgan``, ``eager``, ``compile``, or single names).
Tests taking ``label`` get the shape's label.  An ``impl="cuda"`` case skips,
with the reason, when ``fastgan._C`` cannot be loaded.

Order
-----
A bench module may define ``case_priority(test_name, params)`` (``params``: the
case's ``impl`` / ``label`` / ``shape`` / ``dtype``) returning a sort key: its
cases then run in that order (ties keep the file's order).  The GPU suite cuts a
file at its share of the time budget, so the cases a target judges go first.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import statistics
import time

import pytest
import torch

SCHEMA_VERSION = 1
BASELINE_IMPLS = ("eager", "compile", "copy")


def _select_device() -> torch.device:
    want = os.environ.get("FASTGAN_BENCH_DEVICE", "auto").strip().lower() or "auto"
    if want not in ("auto", "cuda", "cpu"):
        raise pytest.UsageError(f"FASTGAN_BENCH_DEVICE must be auto, cuda or cpu, got {want!r}")
    if want == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("FASTGAN_BENCH_DEVICE=cuda but no CUDA device is visible")
    if want == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


DEVICE = _select_device()
SMOKE = DEVICE.type == "cpu"
# cuDNN's autotuner for every case, fastgan's and the baselines' alike, as a GAN training run on a GPU has
# it (fastgan's trainer: run.cudnn_benchmark auto); FASTGAN_BENCH_CUDNN_BENCHMARK=0 for cuDNN's heuristics.
CUDNN_BENCHMARK = os.environ.get("FASTGAN_BENCH_CUDNN_BENCHMARK", "1").strip() != "0"
if not SMOKE:
    torch.backends.cudnn.benchmark = CUDNN_BENCHMARK
if SMOKE:
    # Tiny CPU ops split over OpenMP threads stall for tens of ms on a busy CI machine.
    torch.set_num_threads(1)
DEFAULT_DTYPES = (torch.float32, torch.bfloat16)


def _interpreter() -> bool:
    from fastgan import _backend

    return _backend.interpreter_usable()


def device_name() -> str:
    return torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu"


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


# ----------------------------------------------------------------------------- timing


def _env_ms(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


_flush_buffer: dict = {}


def _cuda_event_median_ms(fn, warmup_ms: float, rep_ms: float) -> float:
    """do_bench's method without Triton: flush L2, CUDA events, median."""
    if "buf" not in _flush_buffer:
        _flush_buffer["buf"] = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device=DEVICE)
    buf = _flush_buffer["buf"]
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        buf.zero_()
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate = max(start.elapsed_time(end) / 5, 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate))):
        fn()
    n = max(3, int(rep_ms / estimate))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        buf.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def cuda_median_ms(fn) -> tuple[float, str]:
    """(median ms per call, timer name) of ``fn`` on the GPU."""
    warmup_ms = _env_ms("FASTGAN_BENCH_WARMUP_MS", 5.0)
    rep_ms = _env_ms("FASTGAN_BENCH_REP_MS", 25.0)
    try:
        from triton.testing import do_bench
    except Exception:  # pragma: no cover - Triton missing on a GPU machine
        do_bench = None
    if do_bench is not None and "return_mode" in inspect.signature(do_bench).parameters:
        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")), "do_bench"
    return _cuda_event_median_ms(fn, warmup_ms, rep_ms), "cuda_events"


def peak_memory_mb(fn) -> float | None:
    """Peak CUDA memory of one call of ``fn`` above what was allocated before it."""
    if DEVICE.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(DEVICE)
    before = torch.cuda.memory_allocated(DEVICE)
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated(DEVICE) - before
    del out
    return round(peak / 2**20, 3)


def host_issue_ms(fn, calls: int = 5) -> float | None:
    """Median host time (ms) to issue one call of ``fn`` on an idle GPU: what the GPU would wait
    on if the host could not run ahead of it."""
    if DEVICE.type != "cuda":
        return None
    times = []
    for _ in range(calls):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    torch.cuda.synchronize()
    return statistics.median(times)


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


class Bench:
    """Measures one case and records it (see the schema at the top of this file)."""

    def __init__(self, benchmark, request):
        self.benchmark = benchmark
        self.request = request

    def __call__(self, fn, *, op: str, case: str, shape, dtype, impl: str, variant: str = "",
                 bytes_moved: int | None = None, targets: dict | None = None, notes: str | None = None,
                 rounds: int | None = None, extra: dict | None = None) -> dict:
        """Run ``fn`` (no arguments) as the case; returns the record."""
        shape = [int(s) for s in shape]
        dtype = dtype if isinstance(dtype, str) else dtype_name(dtype)
        enabled = not self.benchmark.disabled
        self.benchmark.group = f"{op} {case} {'x'.join(map(str, shape))} {dtype}" + (f" {variant}" if variant else "")

        # Warm up (compiles Triton kernels / torch.compile graphs) before anything is timed.
        if enabled or DEVICE.type == "cuda":
            fn()
            _sync()
        peak = peak_memory_mb(fn) if DEVICE.type == "cuda" else None
        host_ms = host_issue_ms(fn) if enabled else None
        median_ms, timer = None, None
        if enabled and DEVICE.type == "cuda":
            median_ms, timer = cuda_median_ms(fn)

        def synced():
            out = fn()
            _sync()
            return out

        if rounds is None:
            rounds = 3
        self.benchmark.pedantic(synced, rounds=rounds if enabled else 1, iterations=1, warmup_rounds=0)
        wall_ms = None
        if enabled and getattr(self.benchmark, "stats", None) is not None:
            wall_ms = self.benchmark.stats.stats.median * 1e3
            if median_ms is None:
                median_ms, timer = wall_ms, "wall"

        bandwidth = None
        if bytes_moved and median_ms:
            bandwidth = bytes_moved / (median_ms * 1e-3) / 1e9
        record = {
            "schema": SCHEMA_VERSION,
            "op": op,
            "case": case,
            "shape": shape,
            "dtype": dtype,
            "impl": impl,
            "baseline": impl in BASELINE_IMPLS,
            "variant": variant,
            "device": device_name(),
            "smoke": SMOKE,
            "median_ms": _round(median_ms),
            "timer": timer,
            "wall_median_ms": _round(wall_ms),
            "peak_mem_mb": peak,
            "host_ms": _round(host_ms),
            "bytes_moved": int(bytes_moved) if bytes_moved else None,
            "bandwidth_gbps": _round(bandwidth),
        }
        if targets:
            record["targets"] = dict(targets)
        if notes:
            record["notes"] = notes
        record.update(extra or {})
        self.benchmark.extra_info.update(record)
        _append_record(dict(record, nodeid=self.request.node.nodeid))
        return record


def _round(v, digits: int = 6):
    return None if v is None or not math.isfinite(v) else round(float(v), digits)


def _append_record(record: dict) -> None:
    path = os.environ.get("FASTGAN_BENCH_RECORD")
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def device() -> torch.device:
    return DEVICE


@pytest.fixture
def smoke() -> bool:
    return SMOKE


@pytest.fixture
def bench(benchmark, request) -> Bench:
    """``bench(fn, op=..., case=..., shape=..., dtype=..., impl=...)``: time + record a case."""
    callspec = getattr(request.node, "callspec", None)
    impl = callspec.params.get("impl") if callspec is not None else None
    if impl == "cuda":
        from fastgan import _backend

        reason = _backend.cuda_reason_unusable(DEVICE)
        if reason:
            pytest.skip(f"cuda backend unavailable: {reason}")
    return Bench(benchmark, request)


_compiled: dict = {}


def _configure_dynamo() -> None:
    import torch._dynamo

    cfg = torch._dynamo.config
    for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                 "accumulated_recompile_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 256))


@pytest.fixture
def compile_module():
    """``compile_module(module, key)``: ``torch.compile`` (cached per key for the session).

    CUDA: Inductor, ``dynamic=False`` (a graph specialised to each shape, as a
    fixed-size training loop gets).  CPU smoke: the ``eager`` backend, which
    checks that the baseline traces without paying for code generation.
    """
    def compile_(module, key):
        if key not in _compiled:
            _configure_dynamo()
            backend = "inductor" if DEVICE.type == "cuda" else "eager"
            _compiled[key] = torch.compile(module, backend=backend, dynamic=False, fullgraph=True)
        return _compiled[key]

    return compile_


# ----------------------------------------------------------------------------- parametrisation


def _labelled(shapes):
    out = []
    for item in shapes:
        if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str):
            out.append((item[0], tuple(item[1])))
        else:
            shape = tuple(item)
            out.append(("x".join(map(str, shape)), shape))
    return out


def _impl_choices(marker) -> list[str]:
    groups = marker.args if marker is not None and marker.args else ("fastgan", "eager", "compile")
    runnable = {"cuda": DEVICE.type == "cuda", "triton": DEVICE.type == "cuda" or _interpreter(),
                "ref": True, "eager": True, "compile": True}
    fastgan = ["cuda", "triton"] if DEVICE.type == "cuda" else ["ref", "triton"]
    out: list[str] = []
    for g in groups:
        for name in (fastgan if g == "fastgan" else [g]):
            if runnable.get(name, False) and name not in out:
                out.append(name)
    return out


def pytest_generate_tests(metafunc):
    names = [n for n in ("impl", "label", "shape", "dtype") if n in metafunc.fixturenames]
    if "shape" not in names and "dtype" not in names and "impl" not in names:
        return
    module = metafunc.module
    if SMOKE:
        shapes = _labelled(getattr(module, "SMOKE_SHAPES", [(2, 4, 3, 3)]))
        dtypes = list(getattr(module, "SMOKE_DTYPES", DEFAULT_DTYPES))
    else:
        if not hasattr(module, "SHAPES"):
            raise pytest.UsageError(f"{module.__name__}: a bench module whose tests take shape/dtype/impl "
                                    "must define SHAPES (see benchmarks/conftest.py)")
        shapes = _labelled(module.SHAPES)
        dtypes = list(getattr(module, "DTYPES", DEFAULT_DTYPES))
    impls = _impl_choices(metafunc.definition.get_closest_marker("impls")) if "impl" in names else [None]
    if "shape" not in names:
        shapes = [(None, None)]
    if "dtype" not in names:
        dtypes = [None]

    params = []
    for impl in impls:
        for si, (label, shape) in enumerate(shapes):
            for di, dtype in enumerate(dtypes):
                # The interpreter costs ~ms per program: one tiny shape, one dtype.
                if SMOKE and impl == "triton" and (si > 0 or di > 0):
                    continue
                values = {"impl": impl, "label": label, "shape": shape, "dtype": dtype}
                ids = [str(v) for v in (impl, label, dtype_name(dtype) if dtype is not None else None)
                       if v is not None]
                params.append(pytest.param(*[values[n] for n in names], id="-".join(ids)))
    metafunc.parametrize(",".join(names), params)


def pytest_collection_modifyitems(config, items):
    """Each module's cases in its ``case_priority`` order (see Order above); modules keep theirs."""
    modules: dict = {}
    for item in items:
        modules.setdefault(getattr(item, "module", None), len(modules))

    def key(indexed):
        index, item = indexed
        module = getattr(item, "module", None)
        priority = getattr(module, "case_priority", None)
        params = getattr(getattr(item, "callspec", None), "params", {})
        return (modules[module], priority(item.originalname, params) if priority else (), index)

    items[:] = [item for _, item in sorted(enumerate(items), key=key)]


def pytest_report_header(config):
    if SMOKE:
        mode = "CPU smoke mode (tiny shapes; Triton only under TRITON_INTERPRET=1, compile via the eager backend)"
    else:
        mode = (f"{device_name()}; do_bench warm-up {_env_ms('FASTGAN_BENCH_WARMUP_MS', 5.0):g} ms, "
                f"measure {_env_ms('FASTGAN_BENCH_REP_MS', 25.0):g} ms; cudnn.benchmark {CUDNN_BENCHMARK}")
    return f"fastgan benchmarks: {mode}"


def pytest_configure(config):
    config.addinivalue_line("markers", "impls(*groups): restrict the impl parameter "
                                       "(fastgan, eager, compile or single backend names)")
