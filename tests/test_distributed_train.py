"""`fastgan train` on 2 gloo processes equals the 1-process run of the same global batch.

Tiny MLP on ring8, a few steps: synchronized batch norm in G and D (one mixed D batch), an EMA of G, and a
WGAN-GP penalty through DDP (double backward) with the random per-sample tricks; rank 0 alone writes
checkpoints and logs; a 2-process checkpoint resumes in 1 process exactly where a 1-process run would be.
"""
import json
import os

import pytest
import torch

from fastgan.nn import SyncBatchNormAct1d
from fastgan.train import ConfigError, Trainer, load_checkpoint, load_config
from fastgan.train.distributed import Distributed, ShardedDataStream

from _distributed import run_distributed

BASE = ["device=cpu", "hidden=8", "depth=2", "nz=4", "batch_size=8", "toy_samples=256", "n_samples=2",
        "progress=false", "threads=1", "impl=ref", "log_every=1", "sample_every=0", "checkpoint_every=0", "plots=false",
        # SGD, not Adam: Adam turns float-noise gradients (parameters whose true gradient is 0, e.g. G's output
        # bias in front of D's batch norm) into steps of size lr, whose sign is the noise's
        "optimizer_g=sgd", "optimizer_d=sgd", "lr_g=0.05", "lr_d=0.05"]
CONFIGS = {
    # batch norm in G and in D (mixed real + fake batch: SyncBatchNormAct on both), EMA of G
    "bn": ["d_norm=batch", "separate_batches=false", "ema=0.5", "steps=3"],
    # a gradient penalty through DDP (autograd.grad(create_graph=True) on the DDP-wrapped critic), n_critic 2,
    # and the per-sample random tricks (interpolation weights, instance noise, random / flipped labels)
    "gp": ["d_norm=none", "penalty=wgan-gp", "n_critic=2", "steps=2", "instance_noise=0.1", "random_labels=true",
           "label_flip=0.2"],
}
TOL = dict(atol=2e-5, rtol=1e-4)  # per-rank sums reduced in another order than one batch's sums


def _cfg(out, name, *extra):
    return load_config(preset="toy-ring8", sets=BASE + CONFIGS[name] + [f"out={out}", *extra])


def _train_worker(rank, world, root):
    import fastgan.train.trainer as trainer_mod

    saves = []
    save = trainer_mod.save_checkpoint
    trainer_mod.save_checkpoint = lambda state, path, **kw: (saves.append(path), save(state, path, **kw))
    for name in CONFIGS:
        tr = Trainer(_cfg(os.path.join(root, f"{name}-2"), name), log=lambda s: None)
        assert tr.dist.world_size == 2 and tr.stream.batch_size == 8 and isinstance(tr.stream, ShardedDataStream)
        if name == "bn":
            assert any(isinstance(m, SyncBatchNormAct1d) for m in tr.G.modules())
            assert any(isinstance(m, SyncBatchNormAct1d) for m in tr.D.modules())
        summary = tr.train()
        assert summary["status"] == "done"
    # stop after 2 of 3 steps: a checkpoint to resume with one process
    Trainer(_cfg(os.path.join(root, "resume"), "bn"), log=lambda s: None).train(stop_after=2)
    # a stop request (SIGTERM) on rank 1 alone stops both ranks after the same step
    tr = Trainer(_cfg(os.path.join(root, "stop"), "bn"), log=lambda s: None)
    if rank == 1:
        step = tr.train_step

        def step_then_sigterm():
            out = step()
            tr._stop_reason = "SIGTERM"
            return out

        tr.train_step = step_then_sigterm
    summary = tr.train()
    assert summary["status"] == "interrupted" and summary["step"] == 1, summary
    with open(os.path.join(root, f"saves.{rank}.json"), "w") as f:
        json.dump(saves, f)


def _close(a: dict, b: dict, what: str):
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], **TOL, msg=lambda m: f"{what} {k}: {m}")
        else:
            assert torch.equal(a[k], b[k]), f"{what} {k}"


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_two_processes_train_like_one(tmp_path):
    run_distributed(_train_worker, 2, str(tmp_path), timeout=150)
    # rank 0 alone wrote checkpoints; each run ended with one last.pt
    saves = [json.load(open(tmp_path / f"saves.{r}.json")) for r in range(2)]
    assert saves[1] == [] and len(saves[0]) == 4
    assert load_checkpoint(str(tmp_path / "stop" / "checkpoints" / "last.pt"))["step"] == 1
    for name in CONFIGS:
        one = Trainer(_cfg(tmp_path / f"{name}-1", name), log=lambda s: None)
        one.train()
        two = load_checkpoint(str(tmp_path / f"{name}-2" / "checkpoints" / "last.pt"))
        assert two["step"] == one.step
        _close(two["generator"], one.G.state_dict(), f"{name}: G")
        _close(two["discriminator"], one.D.state_dict(), f"{name}: D")
        if one.ema is not None:
            _close(two["ema"], one.ema.state_dict(), f"{name}: EMA")
        # the logged numbers are global-batch means, one row per step, written once
        rows1, rows2 = _rows(tmp_path / f"{name}-1" / "metrics.jsonl"), _rows(tmp_path / f"{name}-2" / "metrics.jsonl")
        assert [r["step"] for r in rows2] == [r["step"] for r in rows1]
        for r1, r2 in zip(rows1, rows2):
            for key in ("loss_d", "loss_g", "d_real", "d_fake") + (("penalty",) if name == "gp" else ()):
                assert r2[key] == pytest.approx(r1[key], rel=1e-4, abs=1e-5), (name, r1["step"], key)
        assert sorted(os.listdir(tmp_path / f"{name}-2" / "checkpoints")) == ["last.pt"]
    # resume the 2-process checkpoint in one process: the same weights as 3 steps in one process
    state = load_checkpoint(str(tmp_path / "resume" / "checkpoints" / "last.pt"))
    assert state["step"] == 2
    resumed = Trainer(_cfg(tmp_path / "resume", "bn"), resume=state, log=lambda s: None)
    resumed.train()
    straight = Trainer(_cfg(tmp_path / "straight", "bn"), log=lambda s: None)
    straight.train()
    _close(resumed.G.state_dict(), straight.G.state_dict(), "resumed G")
    _close(resumed.D.state_dict(), straight.D.state_dict(), "resumed D")


def _gpu_train_worker(rank, world, root):
    tr = Trainer(_cfg(os.path.join(root, "bn-2"), "bn", "device=cuda", "impl=auto"), log=lambda s: None)
    assert tr.device == torch.device("cuda", rank)
    tr.train()


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="the nccl variant needs 2 CUDA GPUs")
def test_two_gpus_train_like_one(tmp_path):  # pragma: no cover - GPU suite
    run_distributed(_gpu_train_worker, 2, str(tmp_path), timeout=300, backend="nccl")
    one = Trainer(_cfg(tmp_path / "bn-1", "bn", "device=cuda", "impl=auto"), log=lambda s: None)
    one.train()
    two = load_checkpoint(str(tmp_path / "bn-2" / "checkpoints" / "last.pt"), map_location="cuda:0")
    _close(two["generator"], one.G.state_dict(), "nccl: G")
    _close(two["discriminator"], one.D.state_dict(), "nccl: D")


def _flag_worker(rank, world, root):
    dist = Distributed.from_env(torch.device("cpu"))
    assert dist.enabled and dist.world_size == world
    # a non-finite update on any rank is skipped on every rank (DDP's replicas stay equal)
    for flags, expected in (((True, True), True), ((True, False), False), ((False, False), False)):
        out = dist.all_true_on_device(torch.tensor(flags[rank]))
        assert out.dtype == torch.bool and out.shape == () and bool(out) is expected, (rank, flags)


def test_a_finiteness_flag_decided_on_the_device_agrees_across_ranks(tmp_path):
    run_distributed(_flag_worker, 2, str(tmp_path), timeout=60)


def test_one_process_is_not_distributed(tmp_path):
    d = Distributed.from_env(torch.device("cpu"))
    assert not d.enabled and d.is_main
    x = torch.arange(6)
    assert d.shard(x) is x
    assert d.all_true(True, torch.device("cpu")) and not d.any_true(False, torch.device("cpu"))
    assert d.mean_stats({"a": 1.0}, torch.device("cpu")) == {"a": 1.0}


def test_sharded_stream_partitions_each_global_batch(tmp_path):
    from fastgan.data import load_dataset

    ds = load_dataset("ring8", num_samples=64, seed=0)
    full = Distributed().data_stream(ds, 8, 0, torch.device("cpu"))
    parts = [ShardedDataStream(ds, 8, 0, torch.device("cpu"), rank=r, world_size=2) for r in range(2)]
    for _ in range(10):  # crosses an epoch boundary
        x = full.next()[0]
        x0, x1 = parts[0].next()[0], parts[1].next()[0]
        assert torch.equal(x0, x[0::2]) and torch.equal(x1, x[1::2])
    assert parts[0].state_dict() == full.state_dict()


def test_configurations_that_cannot_be_split_are_rejected():
    cfg = load_config(preset="toy-ring8", sets=["batch_size=9", "pack=2", "batch_size=10", "g_norm=vbn"])
    with pytest.raises(ConfigError) as err:
        Distributed(rank=0, world_size=4).check(cfg)
    msg = str(err.value)
    assert "run.batch_size is the global batch: 10 must be a multiple of the world size 4" in msg
    assert "vbn" in msg


@pytest.mark.parametrize("option", ["unrolled_steps=2", "hybrid=kl_gan", "semi_supervised=true",
                                    "num_generators=2"])
def test_issue13_algorithms_are_refused_with_several_processes(option):
    cfg = load_config(preset="toy-ring8", sets=[option])
    Distributed(rank=0, world_size=1).check(cfg)  # one process: fine
    with pytest.raises(ConfigError, match=f"{option.split('=')[0]}: not supported with several processes"):
        Distributed(rank=0, world_size=2).check(cfg)


def test_every_batch_norm_is_synchronized_keeping_its_parameters():
    from torch import nn

    from fastgan.nn import BatchNormAct2d, PixelShuffleUpsample, SyncBatchNormAct

    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Sequential(BatchNormAct2d(3)),
                          PixelShuffleUpsample(3, 2, norm="batch"))
    params = dict(model.named_parameters())
    with pytest.warns(RuntimeWarning, match="per-rank statistics"):
        synced = Distributed(rank=1, world_size=2).sync_batch_norm(model)
    assert isinstance(synced[1], SyncBatchNormAct) and synced[1].impl == "ref"  # plain BN on CPU: the reference
    assert isinstance(synced[2][0], SyncBatchNormAct)
    assert type(synced[3].norm) is nn.BatchNorm2d  # read by the fused pixel-shuffle kernel: left alone
    assert all(p is params[k] for k, p in synced.named_parameters())
    assert Distributed().sync_batch_norm(model) is model
