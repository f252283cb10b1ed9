"""The fused layers' host path stays lean: what a GPU would otherwise wait on at small batch.

Deterministic checks (no timings; ``benchmarks/host_overhead.py`` measures):
the forward adds one autograd node (no layout views in the graph), and a plain
backward calls the kernels directly -- the differentiable backward Function
(and its host overhead) only runs when the backward builds a graph."""
import importlib

import pytest
import torch

from fastgan.ops import _norm_act, batch_norm_act, layer_norm_act, minibatch_discrimination

from conftest import all_backend_params

FUSED = [p for p in all_backend_params() if p.values[0] == "triton"]


def _count_calls(monkeypatch, cls):
    calls = []
    original = cls.forward

    def counted(ctx, *args):
        calls.append(1)
        return original(ctx, *args)

    monkeypatch.setattr(cls, "forward", staticmethod(counted))
    return calls


@pytest.mark.parametrize("impl,device", FUSED)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("op", ["batch", "layer"])
def test_forward_adds_one_autograd_node(impl, device, channels_last, op):
    x = torch.randn(3, 4, 5, 1, device=device)  # a size-1 dim: its stride must not cost a view
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    w = torch.rand(4, device=device, requires_grad=True)
    y = batch_norm_act(x, weight=w, impl=impl) if op == "batch" else layer_norm_act(x, w, impl=impl)
    assert type(y.grad_fn).__name__ == "NormActFnBackward"
    inputs = [fn for fn, _ in y.grad_fn.next_functions if fn is not None]
    assert {type(fn).__name__ for fn in inputs} == {"AccumulateGrad"}, inputs
    assert {id(fn.variable) for fn in inputs} == {id(x), id(w)}


@pytest.mark.parametrize("impl,device", FUSED)
def test_plain_backward_skips_the_differentiable_function(impl, device, monkeypatch):
    calls = _count_calls(monkeypatch, _norm_act.NormActBackwardFn)
    x = torch.randn(4, 3, 2, 2, device=device, requires_grad=True)
    w = torch.rand(3, device=device, requires_grad=True)
    y = batch_norm_act(x, weight=w, impl=impl)
    gx_plain, gw_plain = torch.autograd.grad(y, [x, w], torch.ones_like(y))
    assert calls == []
    gx_graph, gw_graph = torch.autograd.grad(batch_norm_act(x, weight=w, impl=impl), [x, w], torch.ones_like(y),
                                             create_graph=True)
    assert calls == [1] and gx_graph.requires_grad
    # one code path: both give the same bits
    assert torch.equal(gx_plain, gx_graph.detach()) and torch.equal(gw_plain, gw_graph.detach())


@pytest.mark.parametrize("impl,device", FUSED)
def test_minibatch_discrimination_plain_backward_skips_the_differentiable_function(impl, device, monkeypatch):
    module = importlib.import_module("fastgan.ops.minibatch_discrimination")  # the package attribute is the op
    calls = _count_calls(monkeypatch, module._MinibatchDiscriminationBackwardFn)
    m = torch.randn(5, 3, 4, device=device, requires_grad=True)
    (g_plain,) = torch.autograd.grad(minibatch_discrimination(m, impl=impl).sum(), m)
    assert calls == []
    (g_graph,) = torch.autograd.grad(minibatch_discrimination(m, impl=impl).sum(), m, create_graph=True)
    assert calls == [1] and torch.equal(g_plain, g_graph.detach())


def test_host_overhead_script_runs():
    """benchmarks/host_overhead.py (the CPU diagnostic) keeps working; no timing is asserted."""
    import os
    import sys
    from pathlib import Path

    from conftest import cuda_emu_skip_reason

    if cuda_emu_skip_reason() is not None:
        pytest.skip(cuda_emu_skip_reason())
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import host_overhead

    from fastgan import _backend

    from fastgan.kernels import batch_norm_act as triton_kernels

    from fastgan.kernels import virtual_stats_affine as vbn_kernels

    kernels, resolve, triton_forward = _backend.kernels, _backend.resolve, triton_kernels._pointwise_kernel
    vbn_forward = vbn_kernels._virtual_stats_affine_kernel
    rounds = []
    results = host_overhead.measure(layers=2, repeats=2, calls=3, on_round=lambda r, k: rounds.append((k, dict(r))))
    assert [k for k, _ in rounds] == [1, 2] and rounds[-1][1] == results  # each round reported, the best so far
    assert all(results[key] <= rounds[0][1][key] for key in results)
    text = host_overhead.table(results, "cpu", 2)
    assert text.count("\n") == 1 + len({name for name, _ in results}) and "best of 2 rounds" in text
    names = {name for name, _ in results}
    assert len(names) == 14 and sum(n.startswith("fastgan") for n in names) == 10
    assert {what for _, what in results} == {"forward", "forward+backward", "double backward"}
    assert len(results) == 42 and all(us > 0 for us in results.values())
    # restored: the backend choice, the C++ autograd routing, the emulator's kernels and Triton's kernels run again
    assert _backend.kernels is kernels and _backend.resolve is resolve and _norm_act.cpp_autograd_fits(None, None)
    assert triton_kernels._pointwise_kernel is triton_forward
    assert vbn_kernels._virtual_stats_affine_kernel is vbn_forward
    assert "FASTGAN_EMU_SKIP_KERNELS" not in os.environ
