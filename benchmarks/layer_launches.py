"""Operations launched by one fused layer's forward and backward, fastgan vs eager, without a GPU.

    python benchmarks/layer_launches.py [--markdown]

The first GPU run (benchmarks/results/2026-11-30-h200.json) found the training steps bound by the
host, where each launch costs host time whatever it computes; this says which layers launch more
than the eager layers they replace.  Counted like ``launch_count.py`` (dispatcher operators that
launch work, on meta tensors, fastgan's layers on their CUDA backend): a floor, not a kernel count
(fastgan's reductions launch a partials kernel and a merge kernel per operator).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import launch_count  # noqa: E402

N, C, HW, R = 8, 64, 8, 2


def _layers():
    """name -> (fastgan layer, eager layer, channels of weight / bias / running stats), the layers
    f(x, weight, bias, running_mean, running_var)."""
    from fastgan import ops, reference

    def eager_ps_bn(x, w, b, rm, rv):
        return F.leaky_relu(F.batch_norm(F.pixel_shuffle(x, R), rm, rv, w, b, True), 0.2)

    return {
        "batch_norm_act": (
            lambda x, w, b, rm, rv: ops.batch_norm_act(x, rm, rv, w, b, True, impl="cuda"),
            lambda x, w, b, rm, rv: F.leaky_relu(F.batch_norm(x, rm, rv, w, b, True), 0.2), C),
        "group_norm_act (32 groups)": (
            lambda x, w, b, rm, rv: ops.group_norm_act(x, 32, w, b, impl="cuda"),
            lambda x, w, b, rm, rv: F.leaky_relu(F.group_norm(x, 32, w, b), 0.2), C),
        "layer_norm_act": (
            lambda x, w, b, rm, rv: ops.layer_norm_act(x, w, b, impl="cuda"),
            lambda x, w, b, rm, rv: F.leaky_relu(F.group_norm(x, 1, w, b), 0.2), C),
        "instance_norm_act": (
            lambda x, w, b, rm, rv: ops.instance_norm_act(x, weight=w, bias=b, impl="cuda"),
            lambda x, w, b, rm, rv: F.leaky_relu(F.instance_norm(x, weight=w, bias=b), 0.2), C),
        "virtual_batch_norm (live pass)": (
            lambda x, w, b, rm, rv: ops.virtual_batch_norm(x, rm, rv, 64, w, b, activation="leaky_relu", impl="cuda"),
            lambda x, w, b, rm, rv: reference.virtual_batch_norm(x, rm, rv, 64, w, b, activation="leaky_relu"), C),
        "pixel_shuffle_act (r=2, bias)": (
            lambda x, w, b, rm, rv: ops.pixel_shuffle_act(x, R, b, impl="cuda"),
            lambda x, w, b, rm, rv: F.leaky_relu(F.pixel_shuffle(x, R) + b[:, None, None], 0.2), C // R**2),
        "pixel_shuffle_batch_norm_act (r=2)": (
            lambda x, w, b, rm, rv: ops.pixel_shuffle_batch_norm_act(x, R, rm, rv, w, b, True, impl="cuda"),
            eager_ps_bn, C // R**2),
    }


def _count(layer, channels: int) -> tuple[int, int, dict, dict]:
    device = torch.device("meta")
    x = torch.randn(N, C, HW, HW, device=device, requires_grad=True)
    w = torch.rand(channels, device=device, requires_grad=True)
    b = torch.randn(channels, device=device, requires_grad=True)
    rm, rv = torch.zeros(channels, device=device), torch.ones(channels, device=device)
    forward = launch_count.LaunchCounter()
    with forward:
        y = layer(x, w, b, rm, rv)
    gy = torch.randn_like(y)
    backward = launch_count.LaunchCounter()
    with backward:
        y.backward(gy)
    return forward.total, backward.total, dict(forward.ops), dict(backward.ops)


def table() -> list[dict]:
    rows = []
    with launch_count._meta_cuda_backend():
        for name, (fused, eager, channels) in _layers().items():
            ff, fb, f_ops, fb_ops = _count(fused, channels)
            ef, eb, _, _ = _count(eager, channels)
            rows.append({"layer": name, "fastgan": (ff, fb), "eager": (ef, eb),
                         "fastgan_forward_ops": f_ops, "fastgan_backward_ops": fb_ops})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| layer | fastgan forward + backward | eager forward + backward |", "| --- | ---: | ---: |"]
    for r in rows:
        (ff, fb), (ef, eb) = r["fastgan"], r["eager"]
        lines.append(f"| {r['layer']} | {ff} + {fb} | {ef} + {eb} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", action="store_true", help="print the markdown table only")
    args = parser.parse_args(argv)
    rows = table()
    if not args.markdown:
        for r in rows:
            print(f"{r['layer']}: forward {r['fastgan_forward_ops']}\n{' ' * len(r['layer'])}  "
                  f"backward {r['fastgan_backward_ops']}")
        print()
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
