"""Host (Python + dispatch) time of a fused norm layer, without a GPU: a diagnostic, not a speed claim.

    python benchmarks/host_overhead.py [--layers 10] [--repeats 5] [--device cuda]

At batch 64-128 a GAN iteration on an H100 can be bound by the host issuing
work rather than by the GPU doing it, so the host code a fused layer runs per
call matters as much as its kernels.  This times fastgan's CUDA backend per
layer -- argument checks, backend choice, layouts, autograd, and the
bindings of ``csrc/`` themselves (their checks, allocations, dispatch) --
through the tests' CPU build of ``csrc/`` (``tests/cuda_emu``) with every
kernel launch skipped (``FASTGAN_EMU_SKIP_KERNELS=1``), next to eager
PyTorch's ``batch_norm`` + ``leaky_relu`` on tiny CPU tensors (where its
kernels cost a microsecond or two), through a stack of layers: the forward,
the forward and one ``backward()``, and a gradient penalty's pattern (the
input gradient with ``create_graph=True``, then its backward).  Skipped
launches leave out what a launch itself costs on a GPU (a few microseconds
each, for both), so read the columns as "what fastgan's host path costs" vs
"what eager PyTorch's costs".  The batch norm layer is timed three times:
with its C++ autograd (``torch.ops.fastgan.norm_act``, what runs), with the
Python Functions the Triton backend uses, to show what the C++ autograd
saves, and on the Triton backend itself (its kernels stubbed out, so what is
timed is fastgan's Python on that path: Functions, launch sizing,
allocations; Triton's own launcher, per launch, shows only on a GPU).  So is
pixel shuffle + batch norm (r = 2, each layer's output viewed back to its
input's shape so that layers chain), twice, and virtual batch norm's live
pass on both backends next to ``fastgan.reference.virtual_batch_norm``.  Timings on a shared machine are
noisy: the best of ``--repeats`` runs is printed.  The GPU suite's step
timings are what speed claims rest on.  Needs a C++ compiler (the first run
builds the emulator, about two minutes).  ``--device cuda`` on a GPU machine
times the same stacks with the real kernels on tiny CUDA tensors instead:
the host's issue time per layer, launches included, where the GPU keeps up.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import sys
import time

import torch
import torch.nn.functional as F

CHANNELS = 128
TESTS = pathlib.Path(__file__).resolve().parents[1] / "tests"


def emulated_ops():
    """torch.ops.fastgan_emu: csrc/ built for CPU tensors (tests/cuda_emu), built once and cached."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from cuda_emu import build

    return build.load()


@contextlib.contextmanager
def emulated_cuda_backend(python_autograd: bool = False):
    """fastgan's ops take their CUDA path on CPU tensors, through the emulated bindings with every kernel
    launch skipped; ``python_autograd``: with the Python Functions instead of the C++ autograd."""
    from fastgan import _backend
    from fastgan.ops import _norm_act

    ops = emulated_ops()
    saved = (_backend.kernels, _backend.resolve, _norm_act.cpp_autograd_fits, os.environ.get("FASTGAN_EMU_SKIP_KERNELS"))
    _backend.kernels = lambda backend, op: ops
    _backend.resolve = lambda impl, device, op="op", cuda_support=True: "cuda"
    if python_autograd:
        _norm_act.cpp_autograd_fits = lambda *args: False
    os.environ["FASTGAN_EMU_SKIP_KERNELS"] = "1"
    try:
        yield
    finally:
        _backend.kernels, _backend.resolve, _norm_act.cpp_autograd_fits, skip = saved
        if skip is None:
            os.environ.pop("FASTGAN_EMU_SKIP_KERNELS", None)
        else:
            os.environ["FASTGAN_EMU_SKIP_KERNELS"] = skip


# The Triton kernel modules fastgan's norm layers launch from (their @triton.jit objects are stubbed out on a CPU).
TRITON_KERNEL_MODULES = ("batch_norm_act", "backward_coefficients", "double_coefficients", "stats_affine",
                         "virtual_stats_affine")


class _NoLaunch:
    """A Triton kernel whose launch does nothing: ``kernel[grid](*args)`` returns at once."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def triton_launches_skipped():
    """fastgan's ops take their Triton path on CPU tensors with every Triton launch skipped: the host time of
    fastgan's own Python on that path (the autograd Functions, launch sizing, allocations), not counting what
    Triton's launcher itself costs per launch on a GPU (only a GPU run shows that)."""
    import importlib

    from triton.runtime.jit import KernelInterface

    from fastgan import _backend

    saved_resolve = _backend.resolve
    stubbed = []  # (module, name, kernel)
    for name in TRITON_KERNEL_MODULES:
        module = importlib.import_module(f"fastgan.kernels.{name}")
        for attr, obj in list(vars(module).items()):
            if isinstance(obj, KernelInterface):
                stubbed.append((module, attr, obj))
                setattr(module, attr, _NoLaunch())
    _backend.resolve = lambda impl, device, op="op", cuda_support=True: "triton"
    try:
        yield
    finally:
        _backend.resolve = saved_resolve
        for module, attr, obj in stubbed:
            setattr(module, attr, obj)


@contextlib.contextmanager
def python_functions_on_cuda():
    """On a GPU: the CUDA backend with the Python Functions instead of its C++ autograd."""
    from fastgan.ops import _norm_act

    fits = _norm_act.cpp_autograd_fits
    _norm_act.cpp_autograd_fits = lambda *args: False
    try:
        yield
    finally:
        _norm_act.cpp_autograd_fits = fits


def _time_us(fn, calls: int, sync) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()  # tiny tensors: the GPU keeps up with the host, so this waits for the last few kernels only
    return (time.perf_counter() - start) / calls * 1e6


def measure(layers: int = 10, repeats: int = 5, calls: int = 200, device: str = "cpu", on_round=None) -> dict:
    """Best-of-``repeats`` microseconds per layer: {(name, "forward" | "forward+backward"): us}.

    ``device="cuda"`` (a GPU machine): the real CUDA backend and eager PyTorch on tiny CUDA tensors, so
    the time is what the host takes to issue each layer's work, launches included.  ``on_round(results,
    k)`` is called after each round with the best so far (a run cut short still has its rounds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # eager's tiny CPU kernels: no thread-pool wake-ups in its column
    try:
        return _measure(layers, repeats, calls, device, on_round)
    finally:
        torch.set_num_threads(threads)


def _measure(layers: int, repeats: int, calls: int, device: str, on_round=None) -> dict:
    from fastgan import reference
    from fastgan.ops import batch_norm_act, layer_norm_act, pixel_shuffle_batch_norm_act, virtual_batch_norm

    c = CHANNELS
    x = torch.randn(2, c, 2, 2, device=device, requires_grad=True)
    gy = torch.randn(2, c, 2, 2, device=device)
    w = torch.ones(c, device=device, requires_grad=True)
    b = torch.zeros(c, device=device, requires_grad=True)
    rm, rv = torch.zeros(c, device=device), torch.ones(c, device=device)
    fused_bn = lambda h: batch_norm_act(h, rm, rv, w, b, impl="cuda")  # noqa: E731
    vbn = {"activation": "leaky_relu"}
    # pixel shuffle (r = 2) to C / 4 channels; its output viewed back as the input's shape, so layers chain
    q = c // 4
    wq, bq = w[:q].detach().requires_grad_(), b[:q].detach().requires_grad_()
    rmq, rvq = rm[:q].clone(), rv[:q].clone()
    fused_ps = lambda h: pixel_shuffle_batch_norm_act(h, 2, rmq, rvq, wq, bq, impl="cuda").view(h.shape)  # noqa: E731
    on_gpu = device != "cpu"
    cpp = contextlib.nullcontext if on_gpu else emulated_cuda_backend
    python = python_functions_on_cuda if on_gpu else lambda: emulated_cuda_backend(python_autograd=True)
    triton_backend = contextlib.nullcontext if on_gpu else triton_launches_skipped
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    stacks = {  # name -> (layer, backend context)
        "fastgan batch_norm_act (C++ autograd)": (fused_bn, cpp),
        "fastgan batch_norm_act (Python Functions)": (fused_bn, python),
        "fastgan batch_norm_act (Triton backend)": (lambda h: batch_norm_act(h, rm, rv, w, b, impl="triton"),
                                                    triton_backend),
        # statistics per half of the batch (one D pass over real and fake, fastgan.nn.separate_batches)
        "fastgan batch_norm_act segments=2 (C++ autograd)": (
            lambda h: batch_norm_act(h, rm, rv, w, b, impl="cuda", segments=2), cpp),
        "fastgan layer_norm_act (C++ autograd)": (lambda h: layer_norm_act(h, w, b, impl="cuda"), cpp),
        "fastgan layer_norm_act (Triton backend)": (lambda h: layer_norm_act(h, w, b, impl="triton"), triton_backend),
        "eager batch_norm + leaky_relu": (lambda h: F.leaky_relu(F.batch_norm(h, rm, rv, w, b, True), 0.2),
                                          contextlib.nullcontext),
        "fastgan pixel_shuffle_batch_norm_act (C++ autograd)": (fused_ps, cpp),
        "fastgan pixel_shuffle_batch_norm_act (Python Functions)": (fused_ps, python),
        "eager pixel_shuffle + batch_norm + leaky_relu": (
            lambda h: F.leaky_relu(F.batch_norm(F.pixel_shuffle(h, 2), rmq, rvq, wq, bq, True), 0.2).view(h.shape),
            contextlib.nullcontext),
        "eager group_norm(1) + leaky_relu": (lambda h: F.leaky_relu(F.group_norm(h, 1, w, b), 0.2),
                                             contextlib.nullcontext),
        # virtual batch norm's live pass against reference statistics (mean 0, mean of squares 1)
        "fastgan virtual_batch_norm (CUDA backend)": (
            lambda h: virtual_batch_norm(h, rm, rv, 64, w, b, **vbn, impl="cuda"), cpp),
        "fastgan virtual_batch_norm (Triton backend)": (
            lambda h: virtual_batch_norm(h, rm, rv, 64, w, b, **vbn, impl="triton"), triton_backend),
        "reference virtual_batch_norm (eager)": (lambda h: reference.virtual_batch_norm(h, rm, rv, 64, w, b, **vbn),
                                                 contextlib.nullcontext),
    }
    def forward(layer):
        h = x
        for _ in range(layers):
            h = layer(h)
        return h

    def double_backward(layer):  # a gradient penalty's pattern: the input gradient as a graph, then its backward
        (gx,) = torch.autograd.grad(forward(layer), x, gy, create_graph=True)
        gx.square().sum().backward()

    timed = {}  # (name, what) -> (backend, fn)
    for name, (layer, backend) in stacks.items():
        timed[(name, "forward")] = (backend, lambda layer=layer: forward(layer))
        timed[(name, "forward+backward")] = (backend, lambda layer=layer: forward(layer).backward(gy))
        timed[(name, "double backward")] = (backend, lambda layer=layer: double_backward(layer))
    # Rounds over all cases, best per case: this machine's speed drifts, and a case timed only in a slow
    # stretch would look slow.
    results = dict.fromkeys(timed, float("inf"))
    for k in range(repeats):
        for key, (backend, fn) in timed.items():
            with backend():
                for _ in range(max(calls // 10, 3)):  # warm-up: caches, allocator
                    fn()
                results[key] = min(results[key], _time_us(fn, calls, sync) / layers)
        if on_round is not None:
            on_round(results, k + 1)
    return results


def table(results: dict, device: str, rounds: int) -> str:
    where = (f"{torch.cuda.get_device_name()}, host issue time" if device == "cuda"
             else "CPU, launches skipped: the emulated CUDA bindings, Triton's kernels stubbed")
    lines = [f"| layer ({where}; us per layer, best of {rounds} round{'s' if rounds != 1 else ''}) | forward | "
             "forward + backward | forward + grad + double backward |", "| --- | ---: | ---: | ---: |"]
    for name in dict.fromkeys(n for n, _ in results):
        times = (results[(name, what)] for what in ("forward", "forward+backward", "double backward"))
        lines.append(f"| {name} | " + " | ".join(f"{us:.1f}" for us in times) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="cpu: the emulated bindings, launches skipped; cuda: a GPU's real kernels")
    parser.add_argument("--every-round", action="store_true",
                        help="print the table after each round (the last one printed is the best so far), so "
                             "that a run killed by a time limit still leaves its measurements")
    args = parser.parse_args(argv)

    def show(results, k):
        print(table(results, args.device, k) + "\n", flush=True)

    results = measure(args.layers, args.repeats, device=args.device, on_round=show if args.every_round else None)
    if not args.every_round:
        print(table(results, args.device, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
