"""Host (Python + dispatch) time of a fused norm layer, without a GPU: a diagnostic, not a speed claim.

    python benchmarks/host_overhead.py [--layers 10] [--repeats 5]

At batch 64-128 a GAN iteration on an H100 can be bound by the host issuing
work rather than by the GPU doing it, so the Python a fused layer runs per
call matters as much as its kernels.  This times fastgan's own host code per
layer -- argument checks, backend choice, layouts, the autograd Functions --
with every ``torch.ops.fastgan`` kernel replaced by a stub that only allocates
its output, next to eager PyTorch's ``batch_norm`` + ``leaky_relu`` on tiny CPU
tensors (where its kernels cost a microsecond or two), both through a stack of
layers and one ``backward()``.  The stubs leave out the kernel launches
themselves (a few microseconds each on a GPU, for both), so read the two
columns as "what fastgan adds on the host" vs "what eager PyTorch costs on the
host".  Timings on a shared machine are noisy: the best of ``--repeats`` runs
is printed.  The GPU suite's step timings are what speed claims rest on.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch
import torch.nn.functional as F

CHANNELS = 128


class _StubKernels:
    """The CUDA backend's op names, allocating their outputs and doing nothing else."""

    def __init__(self, channels: int):
        self.vec = torch.zeros(channels)

    def channel_stats_affine(self, x, *args):
        return (self.vec,) * 5

    def row_moments(self, x):
        return self.table(x), self.table(x)

    def group_stats_affine(self, row_mean, *args):
        return (row_mean,) * 4

    def row_stats_affine(self, x, *args):
        return (self.table(x),) * 4

    def norm_act_forward(self, x, *args, **kw):
        return torch.empty_like(x)

    def norm_act_backward_reduce(self, gy, x, scale, *args, **kw):
        return scale, scale

    def norm_act_backward_coefficients(self, r_g, r_gx, scale, *args):
        return scale, scale, self.vec, self.vec

    def norm_act_backward_reduce_coefficients(self, gy, x, scale, *args, **kw):
        return scale, scale, scale, scale, self.vec, self.vec

    def norm_act_backward_apply(self, gy, x, *args, **kw):
        return torch.empty_like(x)

    def table(self, x):
        return torch.zeros(x.shape[0], x.shape[1])


@contextlib.contextmanager
def stubbed_cuda_backend(channels: int = CHANNELS):
    """fastgan's ops take their CUDA path on CPU tensors, with the stub kernels."""
    from fastgan import _backend

    kernels, resolve = _backend.kernels, _backend.resolve
    stubs = _StubKernels(channels)
    _backend.kernels = lambda backend, op: stubs
    _backend.resolve = lambda impl, device, op="op", cuda_support=True: "cuda"
    try:
        yield
    finally:
        _backend.kernels, _backend.resolve = kernels, resolve


def _best_us(fn, calls: int, repeats: int) -> float:
    for _ in range(max(calls // 10, 5)):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def measure(layers: int = 10, repeats: int = 5, calls: int = 200) -> dict:
    """Best-of-``repeats`` microseconds per layer: {(name, "forward" | "forward+backward"): us}."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # eager's tiny CPU kernels: no thread-pool wake-ups in its column
    try:
        return _measure(layers, repeats, calls)
    finally:
        torch.set_num_threads(threads)


def _measure(layers: int, repeats: int, calls: int) -> dict:
    from fastgan.ops import batch_norm_act, layer_norm_act

    c = CHANNELS
    x = torch.randn(2, c, 1, 1, requires_grad=True)
    gy = torch.randn(2, c, 1, 1)
    w, b = torch.ones(c, requires_grad=True), torch.zeros(c, requires_grad=True)
    rm, rv = torch.zeros(c), torch.ones(c)
    stacks = {
        "fastgan batch_norm_act (stub kernels)": lambda h: batch_norm_act(h, rm, rv, w, b, impl="cuda"),
        "fastgan layer_norm_act (stub kernels)": lambda h: layer_norm_act(h, w, b, impl="cuda"),
        "eager batch_norm + leaky_relu": lambda h: F.leaky_relu(F.batch_norm(h, rm, rv, w, b, True), 0.2),
        "eager group_norm(1) + leaky_relu": lambda h: F.leaky_relu(F.group_norm(h, 1, w, b), 0.2),
    }
    results = {}
    with stubbed_cuda_backend(c):
        for name, layer in stacks.items():
            def forward(layer=layer):
                h = x
                for _ in range(layers):
                    h = layer(h)
                return h

            results[(name, "forward")] = _best_us(forward, calls, repeats) / layers
            results[(name, "forward+backward")] = _best_us(lambda: forward().backward(gy), calls, repeats) / layers
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    results = measure(args.layers, args.repeats)
    print("| layer (CPU host time, us per layer) | forward | forward + backward |")
    print("| --- | ---: | ---: |")
    for name in dict.fromkeys(n for n, _ in results):
        print(f"| {name} | {results[(name, 'forward')]:.1f} | {results[(name, 'forward+backward')]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
