"""Operations launched per training iteration, fastgan vs eager PyTorch, counted without a GPU.

    python benchmarks/launch_count.py [--batch 64] [--markdown]

At small batch a GAN iteration is launch-bound: the GPU waits on the host
issuing kernels, so the number of launches matters as much as the bytes each
one moves.  This counts them on the ``meta`` device (shapes only, no data, no
GPU), with fastgan's layers on their CUDA backend (its ops' meta kernels are
the ones ``torch.compile`` uses) and the plain models as they run in eager
PyTorch, through the same iterations as ``bench_train_step.py``.

What is counted: every operator that reaches the dispatcher and is not a view
or an allocation -- one per kernel launch for elementwise ops and most
reductions.  It is a floor, not a kernel count: a cuDNN convolution or a
fastgan reduction may launch two kernels (fastgan's statistics and gradient
sums do: partials, then a fixed-order merge), and the host time per launch
differs between ops.  Adam runs with ``foreach=True`` (what CUDA tensors
get).  The GPU suite's timings are what speed claims rest on; this says where
launch overhead comes from and guards the count against creeping up.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train_step as steps  # noqa: E402

# Ops that launch nothing: allocations and metadata.
NO_LAUNCH = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "detach", "lift_fresh",
             "set_", "_local_scalar_dense", "sym_size", "sym_stride", "sym_numel", "alias", "is_same_size",
             "_record_function_enter_new", "_record_function_exit"}
CATEGORIES = {  # first match wins; ops inside an optimizer's step() count as "optimizer"
    "convolution": ("convolution",),
    "fastgan kernels": ("fastgan.",),
    "norm + activation (eager)": ("batch_norm", "group_norm", "layer_norm", "leaky_relu", "relu", "threshold_backward"),
}


class LaunchCounter(TorchDispatchMode):
    """Counts the dispatcher operators that launch work (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()
        self.categories: collections.Counter = collections.Counter()
        self.in_optimizer = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::", 1)[-1]
        if not func.is_view and name not in NO_LAUNCH:
            op = f"{func.namespace}.{name}"
            self.ops[op] += 1
            self.categories["optimizer" if self.in_optimizer else _category(op)] += 1
        return func(*args, **(kwargs or {}))

    def watch(self, *optimizers) -> None:
        """Count what ``optimizers``' step() launches as "optimizer"."""
        for opt in optimizers:
            opt.register_step_pre_hook(lambda *_: setattr(self, "in_optimizer", True))
            opt.register_step_post_hook(lambda *_: setattr(self, "in_optimizer", False))

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    def by_category(self) -> dict:
        return dict(self.categories)


def _category(op: str) -> str:
    return next((c for c, keys in CATEGORIES.items() if any(k in op for k in keys)), "other")


@contextlib.contextmanager
def _meta_cuda_backend():
    """fastgan's CUDA backend on meta tensors: its ops' meta kernels stand in for the GPU ones."""
    from fastgan import _backend, _ext

    loaded, reason = _ext.load()
    if not loaded:
        raise RuntimeError(f"fastgan._C is needed to count its ops ({reason})")
    original = _backend.cuda_reason_unusable
    _backend.cuda_reason_unusable = lambda device: None if device.type == "meta" else original(device)
    try:
        yield
    finally:
        _backend.cuda_reason_unusable = original


def count_iteration(model: str, impl: str, batch: int = 64, size: int = 64) -> LaunchCounter:
    """Ops launched by one iteration of ``model`` ("dcgan", "dcgan-mbd", "wgan-gp"; "dcgan-onepass": the
    D step as one pass over real and fake inside ``fastgan.nn.separate_batches``, fastgan only) with
    ``impl`` ("cuda": fastgan's layers, "eager": plain PyTorch), after one warm-up iteration."""
    if model == "dcgan-onepass" and impl != "cuda":
        raise ValueError("dcgan-onepass: fastgan's layers only (eager has no per-half batch norm)")
    device = torch.device("meta")
    shape = (batch, 3, size, size)
    with _meta_cuda_backend():
        # The models and inputs are made on the meta device; the iterations run outside that
        # default-device context, so that Adam keeps its step counters on the CPU as it does for
        # CUDA parameters (under it, torch 2.11's Adam puts them on the meta device, and its
        # step() then fails calling .item() on one).
        with torch.device(device):
            if model == "wgan-gp":
                g, d, nz = steps._models(impl, shape, device, smoke=False, d_norm="layer")
                zs = torch.randn(steps.N_CRITIC + 1, batch, nz)
            else:
                minibatch = "discrimination" if model == "dcgan-mbd" else "none"
                g, d, nz = steps._models(impl, shape, device, smoke=False, minibatch=minibatch)
                z = torch.randn(batch, nz)
            real = torch.randn(shape)
        betas = (0.5, 0.9) if model == "wgan-gp" else (0.5, 0.999)
        opt_g = torch.optim.Adam(g.parameters(), betas=betas, foreach=True)
        opt_d = torch.optim.Adam(d.parameters(), betas=betas, foreach=True)
        if model == "wgan-gp":
            step = steps.wgan_gp_step(g, d, opt_g, opt_d, real, zs, contextlib.nullcontext, impl)
        else:
            step = steps.dcgan_step(g, d, opt_g, opt_d, real, z, contextlib.nullcontext,
                                    one_pass=model == "dcgan-onepass")
        step()  # warm-up: Adam's state is created on the first step
        counter = LaunchCounter()
        counter.watch(opt_g, opt_d)
        with counter:
            step()
    return counter


MODELS = ("dcgan", "dcgan-onepass", "dcgan-mbd", "wgan-gp")
EAGER_TWIN = {"dcgan-onepass": "dcgan"}  # the eager iteration a fastgan-only form compares with


def table(batch: int = 64) -> list[dict]:
    rows = []
    for model in MODELS:
        eager = count_iteration(EAGER_TWIN.get(model, model), "eager", batch)
        fused = count_iteration(model, "cuda", batch)
        rows.append({"model": model, "eager": eager.total, "fastgan": fused.total,
                     "eager_by_category": eager.by_category(), "fastgan_by_category": fused.by_category()})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| iteration | eager PyTorch | fastgan (cuda) | fastgan / eager |", "| --- | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['eager']} | {r['fastgan']} | {r['fastgan'] / r['eager']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table only")
    args = parser.parse_args(argv)
    rows = table(args.batch)
    if not args.markdown:
        for r in rows:
            print(f"{r['model']}: eager {r['eager']} ops {r['eager_by_category']}")
            print(f"{' ' * len(r['model'])}  fastgan {r['fastgan']} ops {r['fastgan_by_category']}")
        print()
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
