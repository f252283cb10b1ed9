"""Batch norm with per-segment statistics (``batch_norm_act(..., segments=T)``): x's batch is T equal
parts of consecutive samples, each normalised with its own batch statistics, as if the layer ran on
each part alone (running stats updated once per part, in order) -- a discriminator's one pass over
``torch.cat([real, fake])`` that keeps "separate batches for real and fake" semantics.  The fast
backends do it in the same kernels as plain batch norm, with (T, C) tables."""
import pytest
import torch
import torch.nn.functional as F

from fastgan import ops, reference
from fastgan.ops import batch_norm_act
from fastgan.reference.batch_norm_act import stats_affine as reference_stats_affine

from _tolerances import assert_close
from conftest import all_backend_params
from test_group_norm_act import compare, make, second_order


def _parts_in_torch(x, running, weight, bias, segments, slope=0.2):
    """The definition: F.batch_norm on each part alone, in order, then the activation."""
    outs = []
    for part in x.chunk(segments):
        y = F.batch_norm(part.double(), *running, weight.double(), bias.double(), training=True, momentum=0.1,
                         eps=1e-5)
        outs.append(F.leaky_relu(y, slope))
    return torch.cat(outs)


@pytest.mark.parametrize("segments", [1, 2, 3, 6])
def test_ref_is_the_layer_on_each_part_alone(segments):
    x, w, b = make((6, 3, 4, 5), torch.float64)
    running = [torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)]
    want_running = [t.clone() for t in running]
    y = reference.batch_norm_act(x, *running, w.double(), b.double(), True, 0.1, 1e-5, "leaky_relu", 0.2, segments)
    want = _parts_in_torch(x, want_running, w, b, segments)
    assert_close(y, want, torch.float64, name="y")
    assert_close(running[0], want_running[0], torch.float64, name="running_mean")
    assert_close(running[1], want_running[1], torch.float64, name="running_var")


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("shape,segments,channels_last", [
    ((6, 3, 4, 5), 2, False), ((6, 3, 4, 5), 3, True), ((4, 5, 3, 3), 4, False), ((8, 70, 2, 2), 2, True),
    ((6, 4), 2, False), ((4, 3, 7), 2, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fast_matches_ref_to_second_order(impl, device, shape, segments, channels_last, dtype):
    x, w, b = make(shape, dtype, device, channels_last)
    if dtype == torch.float64:  # (float32 parameters: the reference's per-part gradients round before their sum)
        w, b = w.double(), b.double()

    def run(i):
        return second_order(lambda x, w, b: batch_norm_act(x, weight=w, bias=b, impl=i, segments=segments), x,
                            [w, b])

    fast = run(impl)
    assert fast[0].dtype == dtype and fast[0].stride() == x.stride()
    compare(fast, run("ref"), dtype)


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("affine", [True, False])
def test_fast_running_stats_and_parameters_match_ref(impl, device, affine):
    x, w, b = make((6, 4, 3, 3), torch.float32, device)
    w, b = (w, b) if affine else (None, None)
    results = []
    for run_impl in (impl, "ref"):
        running = [torch.zeros(4, device=device), torch.ones(4, device=device)]
        leaves = [x.clone().requires_grad_()] + ([w.clone().requires_grad_(), b.clone().requires_grad_()]
                                                  if affine else [])
        y = batch_norm_act(leaves[0], *running, *(leaves[1:] or (None, None)), momentum=0.3, activation="relu",
                           impl=run_impl, segments=3)
        grads = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel(), device=device).view(y.shape)).sum(),
                                    leaves)
        results.append([y, *grads, *running])
    for i, (got, want) in enumerate(zip(*results)):
        assert_close(got, want, torch.float32, scale=2.0, name=f"output {i}")


@pytest.mark.parametrize("impl,device", all_backend_params())
def test_one_segment_per_sample_and_eval_mode(impl, device):
    """T = N (each sample its own segment) is instance-norm-like statistics; in eval mode the running
    statistics serve every part, so segments change nothing."""
    x, w, b = make((3, 4, 2, 5), torch.float32, device)
    y = batch_norm_act(x, weight=w, bias=b, impl=impl, segments=3)
    assert_close(y, ops.instance_norm_act(x, weight=w, bias=b, impl="ref"), torch.float32, scale=2.0, name="y")
    rm, rv = torch.randn(4, device=device), torch.rand(4, device=device) + 0.5
    plain = batch_norm_act(x, rm, rv, w, b, training=False, impl=impl)
    assert torch.equal(batch_norm_act(x, rm, rv, w, b, training=False, impl=impl, segments=3), plain)


@pytest.mark.parametrize("impl,device", all_backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_segment_stats_and_their_affine_tables(impl, device, dtype):
    """segment_stats: (T, C) means and biased variances of T segments; stats_affine of such tables: the
    affine tables row by row, the running stats updated once per row in order (as the reference)."""
    from fastgan import _backend

    k = _backend.kernels(impl, "batch_norm_act")
    for shape, channels_last in (((6, 3, 4, 5), False), ((6, 3, 4, 5), True), ((4, 66, 1, 3), True)):
        x = (torch.randn(shape, device=device) * 2 + 1).to(dtype)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        c = shape[1]
        for segments in (1, 2, shape[0]):
            mean, var = k.segment_stats(x, segments)
            parts = x.double().reshape(segments, -1, *shape[1:]).transpose(1, 2).reshape(segments, c, -1)
            assert mean.shape == var.shape == (segments, c) and mean.dtype == var.dtype == dtype
            assert_close(mean, parts.mean(-1), dtype, name="mean")
            assert_close(var, parts.var(-1, unbiased=False), dtype, scale=4.0, name="var")
            w, b = torch.rand(c, device=device, dtype=dtype) + 0.5, torch.randn(c, device=device, dtype=dtype)
            start = [torch.randn(c, device=device, dtype=dtype), torch.rand(c, device=device, dtype=dtype) + 1]
            runs = [[t.clone() for t in start] for _ in range(2)]
            count = x.numel() // (c * segments)
            got = k.stats_affine(mean, var, w, b, *runs[0], count, 0.3, 1e-5)
            want = reference_stats_affine(mean, var, w, b, *runs[1], count, 0.3, 1e-5)
            for name, a, e in zip(("invstd", "scale", "shift", "running_mean", "running_var"), (*got, *runs[0]),
                                  (*want, *runs[1])):
                assert_close(a, e, dtype, name=name)
        with pytest.raises((ValueError, RuntimeError), match="segments"):
            k.segment_stats(x, 4 if shape[0] == 6 else 3)


@pytest.mark.parametrize("impl", ["ref", "auto"])
def test_bad_segments_raise_naming_the_argument(impl):
    x = torch.randn(6, 3, 2, 2)
    for bad in (0, -2, True, 2.0, "2"):
        with pytest.raises(ValueError, match="segments must be a positive int"):
            batch_norm_act(x, impl=impl, segments=bad)
    with pytest.raises(ValueError, match="segments=4 must divide"):
        batch_norm_act(x, impl=impl, segments=4)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        batch_norm_act(torch.randn(4, 3), impl=impl, segments=4)


# ----------------------------------------------------------------------------- fastgan.nn.separate_batches


def _discriminator(impl, device, **kw):
    from fastgan.models.dcgan import DCGANDiscriminator

    torch.manual_seed(0)
    return DCGANDiscriminator(16, 4, norm="batch", fused=True, impl=impl, **kw).to(device)


@pytest.mark.parametrize("impl,device", [pytest.param("ref", "cpu", id="ref")] + all_backend_params())
def test_one_pass_equals_a_pass_per_part(impl, device):
    """D(cat([real, fake])) inside separate_batches(D, 2): the outputs, parameter gradients, running
    statistics and batch counts of D(real) and D(fake) run separately."""
    import copy

    from fastgan.nn import separate_batches

    d_one = _discriminator(impl, device)
    d_two = copy.deepcopy(d_one)
    real, fake = torch.randn(3, 3, 16, 16, device=device), torch.randn(3, 3, 16, 16, device=device) * 0.5
    with separate_batches(d_one, 2):
        out_one = d_one(torch.cat([real, fake]))
    out_two = torch.cat([d_two(real), d_two(fake)])
    weights = torch.linspace(-1, 1, out_one.numel(), device=device).view(out_one.shape)
    (out_one * weights).sum().backward()
    (out_two * weights).sum().backward()
    assert_close(out_one, out_two, torch.float32, scale=2.0, name="logits")
    for (name, p1), p2 in zip(d_one.named_parameters(), d_two.parameters()):
        assert_close(p1.grad, p2.grad, torch.float32, scale=4.0, name=f"{name}.grad")
    for (name, b1), b2 in zip(d_one.named_buffers(), d_two.buffers()):
        if b1.dtype.is_floating_point:
            assert_close(b1, b2, torch.float32, scale=2.0, name=name)
        else:
            assert torch.equal(b1, b2), name
    assert all(m.segments == 1 for m in d_one.modules() if hasattr(m, "segments"))  # restored


def test_separate_batches_refuses_layers_that_would_mix_the_parts():
    from torch.nn.utils.parametrizations import spectral_norm

    from fastgan.nn import BatchNormAct2d, InstanceNormAct2d, separate_batches

    cases = {
        "MinibatchDiscrimination": _discriminator("ref", "cpu", minibatch="discrimination"),
        "is not a fastgan batch-norm layer": torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)),
        "spectrally normalised": torch.nn.Sequential(spectral_norm(torch.nn.Conv2d(3, 4, 3)), BatchNormAct2d(4)),
        "momentum=None": torch.nn.Sequential(BatchNormAct2d(4, momentum=None)),
        # instance norm's running statistics average over the whole batch: once per pass, not per part
        "updates running statistics from the whole batch": torch.nn.Sequential(
            InstanceNormAct2d(4, track_running_stats=True)),
        "running statistics from": torch.nn.Sequential(torch.nn.InstanceNorm2d(4, track_running_stats=True)),
    }
    for reason, module in cases.items():
        with pytest.raises(ValueError, match=reason):
            with separate_batches(module, 2):
                pass
    # per-sample statistics without running ones, or instance norm in eval mode: nothing mixes the parts
    for fine in (InstanceNormAct2d(4), InstanceNormAct2d(4, track_running_stats=True).eval(),
                 torch.nn.InstanceNorm2d(4)):
        with separate_batches(torch.nn.Sequential(fine), 2):
            pass
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="parts must be a positive int"):
            with separate_batches(torch.nn.Sequential(BatchNormAct2d(4)), bad):
                pass
    bn = BatchNormAct2d(4)
    with pytest.raises(RuntimeError, match="boom"):
        with separate_batches(bn, 3):
            assert bn.segments == 3
            raise RuntimeError("boom")
    assert bn.segments == 1
    with pytest.raises(ValueError, match="segments=3 must divide"):
        with separate_batches(bn, 3):
            bn(torch.randn(4, 4, 2, 2))


@pytest.mark.parametrize("impl,device", [p for p in all_backend_params() if "cuda" in str(p.values[0])])
def test_cuda_backend_runs_the_segmented_layer_as_one_cpp_autograd_node(impl, device):
    """As the plain layer: statistics, their tables and the fused forward in one call (norm_act_stats with
    segments), whose C++ node differentiates through the per-part statistics itself."""
    from fastgan import _backend

    x, w, b = make((4, 3, 2, 2), torch.float32, device)
    x.requires_grad_()
    plain = batch_norm_act(x, weight=w, bias=b, impl=impl)
    halves = batch_norm_act(x, weight=w, bias=b, impl=impl, segments=2)
    assert type(halves.grad_fn).__name__ == type(plain.grad_fn).__name__
    assert not isinstance(halves.grad_fn, torch.autograd.function.BackwardCFunction)  # not a Python Function
    k = _backend.kernels(impl, "batch_norm_act")
    with pytest.raises(ValueError, match="segments = 2 takes batch norm's per-channel statistics"):
        k.norm_act_stats(x.detach(), w, b, None, None, 0.0, 1e-5, 3, True, 2, 0.2, 1, 2)


def test_a_copy_made_inside_separate_batches_is_a_plain_layer():
    import copy
    import pickle

    from fastgan.nn import BatchNormAct2d, separate_batches

    d = torch.nn.Sequential(BatchNormAct2d(4))
    with separate_batches(d, 2):
        copies = (copy.deepcopy(d), pickle.loads(pickle.dumps(d)))
        assert d[0].segments == 2
    assert d[0].segments == 1 and all(c[0].segments == 1 for c in copies)
