"""Where a training iteration's time goes on the GPU: kernel time by kind, fastgan next to eager.

    python benchmarks/profile_step.py [--steps 5] [--out FILE.md] [--cases dcgan-b128-float32,...]

The step benchmarks (``bench_train_step.py``) say how long an iteration takes;
this says why.  For each case it builds the same models and iteration as the
step suite (fastgan's CUDA backend vs the plain eager models, same weights),
warms up, then runs ``--steps`` iterations under ``torch.profiler`` and
reports per iteration:

* wall time (synchronised) and host time (the Python loop issuing the
  iteration, the GPU drained before and not waited on at the end);
* GPU kernel time: the sum of every kernel's duration, i.e. what a perfectly
  host-overlapped (or CUDA-graph-captured) iteration could not go below, and
  the number of kernel launches;
* that kernel time split by kind (convolutions and their layout transposes,
  normalisation, fastgan's kernels, element-wise, reductions, optimizer,
  copies, other), and the most expensive kernels.

If fastgan's kernel time is at or above eager's, a faster host path cannot
make the iteration faster than eager; the kind table says which kernels to
work on.  A diagnostic: speed claims rest on the step suite's CUDA-event
timings, not on profiler durations.  Needs a GPU; ``--smoke`` runs tiny
models on CPU (no kernels: the tables are empty) to check the script works.
"""
from __future__ import annotations

import argparse
import collections
import re
import sys
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import bench_train_step as train_steps  # noqa: E402  (the iterations and models the step suite times)


def _triton_kernel_names() -> tuple:
    """fastgan's Triton kernels (``@triton.jit`` functions of fastgan/kernels ending in ``_kernel``): the
    profiler names them by their Python names."""
    names = set()
    for path in (BENCH.parent / "fastgan" / "kernels").glob("*.py"):
        names.update(re.findall(r"@triton\.jit[^\n]*\ndef (\w+_kernel)\(", path.read_text(encoding="utf-8")))
    return tuple(sorted(n.lower() for n in names))


# Kernel kinds, first match wins (lower-case substrings of the demangled kernel name): cuDNN's batch norm
# kernels are named cudnn::bn_..., so normalisation is matched before convolution.
KINDS = (
    ("fastgan", ("fastgan::",) + _triton_kernel_names()),
    ("normalization", ("batch_norm", "batchnorm", "bn_fw", "bn_bw", "group_norm", "groupnorm", "layer_norm",
                       "layernorm", "welford")),
    ("conv layout transpose", ("nchwtonhwc", "nhwctonchw", "transpose")),
    ("convolution", ("conv", "xmma", "gemm", "cutlass", "implicit", "dgrad", "wgrad", "fprop", "winograd",
                     "fft", "flip_filter", "cudnn")),
    ("optimizer", ("multi_tensor_apply", "adam", "foreach")),
    ("reduction", ("reduce_kernel", "reduce")),
    ("copy / fill", ("copy", "fill", "memset", "memcpy", "cat")),
    ("element-wise", ("elementwise", "vectorized", "unrolled")),
)

# label -> (iteration, batch, autocast dtype)
CASES = {
    "dcgan-b128-float32": ("dcgan", 128, torch.float32),
    "dcgan-b128-bfloat16": ("dcgan", 128, torch.bfloat16),
    "dcgan-b64-float32": ("dcgan", 64, torch.float32),
    # fastgan's D step as one pass over real and fake (fastgan.nn.separate_batches); eager: two passes
    "dcgan-onepass-b128-float32": ("dcgan_onepass", 128, torch.float32),
    "wgan-gp-b128-float32": ("wgan_gp", 128, torch.float32),
}
DEFAULT_CASES = ("dcgan-b128-float32", "dcgan-onepass-b128-float32", "dcgan-b64-float32", "wgan-gp-b128-float32",
                 "dcgan-b128-bfloat16")


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, needles in KINDS:
        if any(n in low for n in needles):
            return kind
    return "other"


def build_step(case: str, impl: str, device: torch.device, smoke: bool):
    """The step suite's iteration for ``case`` with ``impl`` ("cuda" / "triton" / "ref": fastgan, or "eager")."""
    what, batch, dtype = CASES[case]
    size = 16 if smoke else 64
    shape = (4 if smoke else batch, 3, size, size)
    d_norm = "layer" if what == "wgan_gp" else "batch"
    g, d, nz = train_steps._models(impl, shape, device, smoke, d_norm=d_norm)
    amp = train_steps._autocast(device, dtype)
    real = torch.randn(shape, device=device).clamp_(-1, 1)
    if what in ("dcgan", "dcgan_onepass"):
        opt_g, opt_d = train_steps._adam(g), train_steps._adam(d)
        return train_steps.dcgan_step(g, d, opt_g, opt_d, real, torch.randn(shape[0], nz, device=device), amp,
                                      one_pass=what == "dcgan_onepass" and impl != "eager")
    opt_g, opt_d = train_steps._adam(g, (0.5, 0.9)), train_steps._adam(d, (0.5, 0.9))
    zs = torch.randn(train_steps.N_CRITIC + 1, shape[0], nz, device=device)
    return train_steps.wgan_gp_step(g, d, opt_g, opt_d, real, zs, amp, impl)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile(step, device: torch.device, steps: int, warmup: int = 3) -> dict:
    """Per-iteration wall / host / kernel times (ms), launches, kernel time by kind and by kernel name."""
    for _ in range(warmup):
        step()
    _sync(device)
    wall, host = [], []
    for _ in range(steps):  # timed outside the profiler, which adds host time of its own
        _sync(device)
        t0 = time.perf_counter()
        step()
        t1 = time.perf_counter()
        _sync(device)
        host.append(t1 - t0)
        wall.append(time.perf_counter() - t0)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    by_name = collections.defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = by_name[event.name]
            entry[0] += event.time_range.elapsed_us() / 1e3 / steps
            entry[1] += 1
    by_kind = collections.defaultdict(float)
    for name, (ms, _) in by_name.items():
        by_kind[kind_of(name)] += ms
    median = lambda xs: sorted(xs)[len(xs) // 2] * 1e3  # noqa: E731
    return {"wall_ms": median(wall), "host_ms": median(host), "kernel_ms": sum(by_kind.values()),
            "launches": sum(n for _, n in by_name.values()) / steps, "by_kind": dict(by_kind),
            "by_name": {k: (ms, n / steps) for k, (ms, n) in by_name.items()}}


def render(case: str, results: dict, top: int = 12) -> str:
    """Markdown for one case: summary, kernel time by kind, the most expensive kernels (``results``: impl ->
    ``profile()``)."""
    impls = list(results)
    lines = [f"### {case}", "", "| per iteration | " + " | ".join(impls) + " |", "|---|" + "---:|" * len(impls)]
    for key, label in (("wall_ms", "wall ms (synchronised)"), ("host_ms", "host ms (issuing)"),
                       ("kernel_ms", "GPU kernel ms (sum of durations)"), ("launches", "kernel launches")):
        lines.append(f"| {label} | " + " | ".join(f"{results[i][key]:.3f}" if key != "launches"
                                                  else f"{results[i][key]:.0f}" for i in impls) + " |")
    kinds = sorted({k for r in results.values() for k in r["by_kind"]},
                   key=lambda k: -max(r["by_kind"].get(k, 0.0) for r in results.values()))
    lines += ["", "| kernel ms by kind | " + " | ".join(impls) + " |", "|---|" + "---:|" * len(impls)]
    for kind in kinds:
        lines.append(f"| {kind} | " + " | ".join(f"{results[i]['by_kind'].get(kind, 0.0):.3f}" for i in impls)
                     + " |")
    for impl in impls:
        ranked = sorted(results[impl]["by_name"].items(), key=lambda kv: -kv[1][0])[:top]
        lines += ["", f"{impl}: top kernels", "", "| kernel | kind | ms / iteration | launches / iteration |",
                  "|---|---|---:|---:|"]
        for name, (ms, n) in ranked:
            short = name if len(name) <= 110 else name[:107] + "..."
            lines.append(f"| `{short.replace('|', '/')}` | {kind_of(name)} | {ms:.3f} | {n:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES), help=f"comma-separated, of {sorted(CASES)}")
    parser.add_argument("--impls", default="cuda,eager", help="fastgan backends and/or eager, comma-separated")
    parser.add_argument("--out", help="write the markdown here too")
    parser.add_argument("--smoke", action="store_true", help="tiny models on CPU (fastgan through ref)")
    parser.add_argument("--no-cudnn-benchmark", action="store_true", help="cuDNN's heuristics, not its autotuner")
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown --cases {unknown}; choose from {sorted(CASES)}")
    if not args.smoke and not torch.cuda.is_available():
        print("profile_step: no CUDA device (use --smoke for a CPU check of the script)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark  # as the step suite (benchmarks/conftest.py)
    impls = [("ref" if args.smoke and i != "eager" else i) for i in args.impls.split(",") if i]
    where = "CPU smoke run (no kernels)" if args.smoke else torch.cuda.get_device_name(device)
    text = [f"# Kernel time per training iteration: {where}, torch {torch.__version__}", "",
            f"{args.steps} profiled iterations after 3 warm-up ones; times per iteration; "
            f"cudnn.benchmark {torch.backends.cudnn.benchmark}.", ""]
    for case in cases:
        results = {}
        for impl in impls:
            step = build_step(case, impl, device, args.smoke)
            results[impl] = profile(step, device, args.steps)
            del step
        text.append(render(case, results))
        print(text[-1], flush=True)
        if args.out:  # after each case: a run its stage's time limit ends still leaves the cases done
            Path(args.out).write_text("\n".join(text), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
