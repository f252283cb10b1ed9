"""SyncBatchNormAct: 2 gloo processes against one process running BatchNormAct on the concatenated batch."""
import zlib

import pytest
import torch
import torch.distributed as dist
from torch import nn

import fastgan
from fastgan import _backend
from fastgan.nn import BatchNormAct2d, SyncBatchNormAct1d, SyncBatchNormAct2d, convert_sync

from _distributed import run_distributed
from _tolerances import assert_close

C, H, W = 3, 2, 3


def _fast_impls():
    if torch.cuda.is_available():
        return []  # the CPU gloo test runs the interpreter only; the GPU variant is test_sync_bn_nccl
    return ["triton"] if _backend.interpreter_usable() else []


def _summed(t):
    t = t.detach().clone()
    dist.all_reduce(t)
    return t


def _case(impl, sizes, rank, world, device="cpu", dtype=torch.float32, channels_last=False):
    """One rank's share of a global problem drawn from one seed on every rank; compares with one process."""
    g = torch.Generator().manual_seed(zlib.crc32(f"{impl} {sizes}".encode()))  # the same on every rank
    n = sum(sizes)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def draw(scale=1.0, shift=0.0):
        t = torch.randn(n, C, H, W, generator=g) * scale + shift
        return t.to(device, dtype).contiguous(memory_format=fmt)

    xs = [draw(2.0, 1.0) for _ in range(2)]
    gys = [draw() for _ in range(2)]
    v = draw()
    lo, hi = sum(sizes[:rank]), sum(sizes[:rank + 1])
    name = f"{impl} sizes {sizes} {dtype} {'NHWC' if channels_last else 'NCHW'} rank {rank}"

    single = BatchNormAct2d(C, momentum=0.3, impl="ref")
    with torch.no_grad():
        single.weight.uniform_(0.5, 1.5, generator=g), single.bias.normal_(generator=g)
    single.to(device)
    synced = convert_sync(BatchNormAct2d(C, momentum=0.3, impl=impl)).to(device)
    synced.load_state_dict(single.state_dict())
    assert isinstance(synced, SyncBatchNormAct2d)
    alpha = torch.randn(C, generator=g).to(device)  # cotangent of dweight: the same on every rank
    for step, (x, gy) in enumerate(zip(xs, gys)):
        x_all, gy_all = x.clone().requires_grad_(), gy.clone().requires_grad_()
        y_all = single(x_all)
        dx_all, dw_all, db_all = torch.autograd.grad(y_all, (x_all, single.weight, single.bias), gy_all,
                                                     create_graph=True)
        x_loc, gy_loc = x[lo:hi].clone().requires_grad_(), gy[lo:hi].clone().requires_grad_()
        y_loc = synced(x_loc)
        dx, dw, db = torch.autograd.grad(y_loc, (x_loc, synced.weight, synced.bias), gy_loc, create_graph=True)
        assert_close(y_loc, y_all[lo:hi], name=f"{name} step {step}: y")
        assert_close(dx, dx_all[lo:hi], name=f"{name} step {step}: dx")
        # weight / bias get each rank's share (DDP averages them): their sum is the single-process gradient
        for got, want, what in ((dw, dw_all, "dweight"), (db, db_all, "dbias")):
            assert_close(_summed(got), want, name=f"{name} step {step}: {what}")
        # double backward (a gradient penalty's): the sum over ranks of <v, dx> + <alpha, dw> is the
        # single-process one, so its gradients are the single-process ones (x, gy) or sum to them (weight)
        gg_all = torch.autograd.grad((dx_all * v).sum() + (dw_all * alpha).sum(), (x_all, gy_all, single.weight))
        gg = torch.autograd.grad((dx * v[lo:hi]).sum() + (dw * alpha).sum(), (x_loc, gy_loc, synced.weight),
                                 create_graph=impl != "ref")
        assert_close(gg[0], gg_all[0][lo:hi], name=f"{name} step {step}: double backward wrt x")
        assert_close(gg[1], gg_all[1][lo:hi], name=f"{name} step {step}: double backward wrt gy")
        assert_close(_summed(gg[2]), gg_all[2], name=f"{name} step {step}: double backward wrt weight")
        if impl != "ref" and hi > lo:  # a third derivative raises instead of returning wrong zeros
            with pytest.raises(RuntimeError, match="first and second derivatives only"):
                torch.autograd.grad(gg[0].sum(), x_loc)
    for buf in ("running_mean", "running_var", "num_batches_tracked"):
        assert_close(getattr(synced, buf).float(), getattr(single, buf).float(), name=f"{name}: {buf}")
    # eval mode: running statistics, no collective
    synced.eval(), single.eval()
    assert_close(synced(xs[0][lo:hi]), single(xs[0])[lo:hi], name=f"{name}: eval")


def _sync_bn_worker(rank, world, impls, device="cpu"):
    device = f"cuda:{rank}" if device == "cuda" else device
    for impl in impls:
        # equal, unequal, one rank empty (the interpreter is slow: unequal covers equal there)
        for sizes in ([2, 2], [3, 1], [3, 0]) if impl == "ref" else ([3, 1], [3, 0]):
            _case(impl, sizes, rank, world, device)
        _case(impl, [3, 1], rank, world, device, torch.bfloat16, channels_last=True)
    if device != "cpu":
        return
    # 1d variant on (N, C) with the world's default impl
    g = torch.Generator().manual_seed(7)
    x = torch.randn(5, 4, generator=g)
    single = fastgan.nn.BatchNormAct1d(4, activation="relu", impl="ref")
    synced = convert_sync(fastgan.nn.BatchNormAct1d(4, activation="relu", impl="ref"))
    assert isinstance(synced, SyncBatchNormAct1d)
    lo, hi = (0, 3) if rank == 0 else (3, 5)
    assert_close(synced(x[lo:hi]), single(x)[lo:hi], name="1d")
    assert_close(synced.running_var, single.running_var, name="1d running_var")


def test_sync_bn_two_processes_match_one_process_on_the_concatenated_batch():
    run_distributed(_sync_bn_worker, 2, ["ref"] + _fast_impls(), timeout=120)


def _tiny_global_batch_worker(rank, world, impls):
    for impl in impls:
        for sizes in ([0, 0], [1, 0]):  # every rank empty; one value per channel in all
            layer = SyncBatchNormAct2d(3, impl=impl)
            with torch.no_grad():
                layer.running_mean.fill_(2.0), layer.running_var.fill_(5.0)
            layer(torch.randn(sizes[rank], 3, 1, 1))
            # all empty: untouched, as one process on the empty joined batch leaves them; one value: no
            # unbiased variance to average in (it was NaN, and stayed NaN), the mean still moves
            assert torch.equal(layer.running_var, torch.full((3,), 5.0)), (impl, sizes, layer.running_var)
            if sizes == [0, 0]:
                assert torch.equal(layer.running_mean, torch.full((3,), 2.0)), (impl, layer.running_mean)
            else:
                assert torch.isfinite(layer.running_mean).all() and not torch.equal(layer.running_mean,
                                                                                    torch.full((3,), 2.0))


def test_sync_bn_running_stats_with_an_empty_or_one_value_global_batch():
    run_distributed(_tiny_global_batch_worker, 2, ["ref"] + _fast_impls(), timeout=120)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="the nccl variant needs 2 CUDA GPUs")
@pytest.mark.parametrize("impl", ["triton", "cuda"])
def test_sync_bn_nccl_two_gpus(impl):  # pragma: no cover - GPU suite
    run_distributed(_sync_bn_worker, 2, [impl], "cuda", timeout=300, backend="nccl")


# ------------------------------------------------------------------ one process: fallbacks and conversion


def test_outside_a_process_group_it_is_batch_norm_act():
    assert not dist.is_initialized()
    plain = BatchNormAct2d(C, momentum=None)
    synced = SyncBatchNormAct2d(C, momentum=None)
    synced.load_state_dict(plain.state_dict())
    for _ in range(2):
        x = torch.randn(4, C, H, W)
        assert_close(synced(x), plain(x), name="y")
    assert_close(synced.running_var, plain.running_var, name="running_var")
    with pytest.raises(ValueError, match="x must have 4"):
        synced(torch.randn(4, C))


def test_convert_sync_keeps_parameters_buffers_and_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.LeakyReLU(0.1),
                          nn.Sequential(fastgan.nn.BatchNormReLU2d(4).eval()))
    fused = fastgan.convert(model)
    params = {k: v for k, v in fused.named_parameters()}
    buffers = {k: v for k, v in fused.named_buffers()}
    keys = list(fused.state_dict())
    synced = convert_sync(fused)
    assert isinstance(synced[1], SyncBatchNormAct2d) and isinstance(synced[3][0], SyncBatchNormAct2d)
    assert synced[1].activation == "leaky_relu" and synced[1].negative_slope == 0.1
    assert synced[3][0].activation == "relu" and not synced[3][0].training
    assert all(p is params[k] for k, p in synced.named_parameters())  # optimisers stay valid
    assert all(b is buffers[k] for k, b in synced.named_buffers())
    assert list(synced.state_dict()) == keys
    again = fastgan.convert(nn.Sequential(nn.BatchNorm2d(2), nn.ReLU()), sync=True)
    assert isinstance(again[0], SyncBatchNormAct2d) and again[0].activation == "relu"
    with pytest.raises(TypeError, match="module must be an nn.Module"):
        convert_sync("not a model")


def test_op_rejects_bad_arguments():
    with pytest.raises(TypeError, match="x must be a floating"):
        fastgan.ops.sync_batch_norm_act(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="weight must have 3"):
        fastgan.ops.sync_batch_norm_act(torch.randn(2, 3), weight=torch.ones(2))
