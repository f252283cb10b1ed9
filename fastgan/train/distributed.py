"""Multi-process training: ``torchrun --nproc-per-node N -m fastgan train ...`` (docs/distributed.md).

One process per device, PyTorch's own machinery: the process group comes
from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT; gloo for CPU runs, nccl for CUDA), gradients are averaged by
``DistributedDataParallel`` and every batch norm becomes a
``SyncBatchNormAct`` (statistics of the global batch).

The design keeps an N-process run equal to the one-process run of the same
configuration:

* ``run.batch_size`` is the *global* batch; each rank takes every N-th
  sample of each global batch (``DistributedSampler``'s partition, applied
  per batch of the trainer's own (seed, epoch) permutation, so the data order
  does not depend on N and a checkpoint resumes on any N that divides the
  batch);
* every rank keeps the same torch RNG stream: latents and labels are drawn
  for the global batch and sliced the same way, and draws that must agree
  (snapshot swaps) do;
* DDP averages the per-rank gradients of per-rank mean losses: the gradient
  of the global-batch mean; a rank's update is skipped only when every rank
  skips it; logged numbers are means over the ranks;
* rank 0 alone writes logs, samples, evaluations and checkpoints.

Outside torchrun (no WORLD_SIZE, or WORLD_SIZE=1) :class:`Distributed` is
a world of one and every method is the identity.
"""
from __future__ import annotations

import atexit
import inspect
import os
import warnings
from typing import Optional

import torch
from torch import nn

from .data import DataStream
from .tricks import add_instance_noise


class ShardedDataStream(DataStream):
    """The global batch sequence of :class:`DataStream` (``batch_size`` = global batch, the same state dict);
    this rank's batch is samples ``rank, rank + N, ...`` of each global batch."""

    def __init__(self, dataset, batch_size: int, seed: int, device: torch.device, *, rank: int, world_size: int,
                 workers: Optional[int] = None):
        super().__init__(dataset, batch_size, seed, device, workers=workers)
        self.rank, self.world_size = int(rank), int(world_size)

    def _select(self, idx: torch.Tensor) -> torch.Tensor:
        return idx[self.rank::self.world_size]


class NullLog:
    """What a rank other than 0 has in place of a metrics / events log: nothing is written."""

    def __init__(self, path: str, resume_step: Optional[int] = None):
        self.path = path

    def write(self, row: dict) -> None:
        pass


class _Dispatch(nn.Module):
    """DDP only hooks ``forward``: this routes a method name (``forward``, ``forward_all``) through it."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, method: str, *args, **kwargs):
        return getattr(self.module, method)(*args, **kwargs)


class DDPModule:
    """``module`` called (or its ``forward_all``) through ``DistributedDataParallel``: the backward of
    what it returns all-reduces the gradients.  The module itself keeps its weights and state-dict keys."""

    def __init__(self, module: nn.Module, device: torch.device):
        from torch.nn.parallel import DistributedDataParallel

        self.module = module
        # broadcast_buffers=False: the running statistics of synchronized batch norms agree on every rank
        # already, and the other buffers (spectral-norm vectors) follow identical updates.
        params = inspect.signature(DistributedDataParallel.__init__).parameters
        no_buffer_sync = {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": False}
        self.ddp = DistributedDataParallel(_Dispatch(module), device_ids=[device.index] if device.type == "cuda"
                                           else None, **no_buffer_sync)

    def __call__(self, *args, **kwargs):
        return self.ddp("forward", *args, **kwargs)

    def forward_all(self, *args, **kwargs):
        return self.ddp("forward_all", *args, **kwargs)


class Distributed:
    """This process's place in the job.  ``world_size == 1``: not distributed."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0):
        self.rank, self.world_size, self.local_rank = int(rank), int(world_size), int(local_rank)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return f"Distributed(rank={self.rank}, world_size={self.world_size}, local_rank={self.local_rank})"

    # -- set-up --------------------------------------------------------------------------------
    @classmethod
    def from_env(cls, device: torch.device) -> "Distributed":
        """Join the process group torchrun describes (or the one already initialised); a world of one
        without either.  ``device`` (the resolved run.device) picks the backend: nccl for CUDA, else gloo."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
            return cls(dist.get_rank(), dist.get_world_size(), local)
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return cls()
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch has no torch.distributed")
        if "RANK" not in os.environ:
            raise ValueError(f"WORLD_SIZE={world} but RANK is not set: launch with torchrun, or set RANK, "
                             "LOCAL_RANK, MASTER_ADDR and MASTER_PORT for every process")
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_destroy_group)
        return cls(rank, world, local)

    def local_device(self, device: torch.device) -> torch.device:
        """cuda -> this process's GPU (cuda:LOCAL_RANK); other devices unchanged."""
        if not self.enabled or device.type != "cuda":
            return device
        if self.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={self.local_rank} but this node has {torch.cuda.device_count()} GPU(s); "
                             "use --nproc-per-node <= the GPU count")
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def check(self, cfg) -> None:
        """Configurations that cannot be split over the ranks: a clear ConfigError."""
        if not self.enabled:
            return
        from .config import ConfigError

        r, t, m = cfg.run, cfg.tricks, cfg.model
        errors = []
        if r.batch_size % self.world_size:
            errors.append(f"run.batch_size is the global batch: {r.batch_size} must be a multiple of the world "
                          f"size {self.world_size}")
        local = r.batch_size // self.world_size
        if t.pack > 1 and local % t.pack:
            errors.append(f"tricks.pack: each rank's batch ({local}) must be a multiple of the pack size {t.pack}")
        if m.minibatch == "stddev" and (local // t.pack) % min(m.stddev_group, local // t.pack):
            errors.append(f"model.stddev_group: each rank's D batch ({local // t.pack}) must be a multiple of the "
                          f"group size {m.stddev_group}")
        lo = cfg.loss
        # Issue 13's algorithms keep extra networks / per-batch bookkeeping that is not synced across ranks yet
        # (the encoder is not under DDP; the unrolled look-ahead and the labelled subset would be per rank).
        for on, name in ((lo.unrolled_steps > 0, "loss.unrolled_steps"), (lo.hybrid != "none", "loss.hybrid"),
                         (lo.semi_supervised, "loss.semi_supervised"), (m.num_generators > 1, "model.num_generators")):
            if on:
                errors.append(f"{name}: not supported with several processes yet; train it on one process")
        if "vbn" in (m.g_norm, m.d_norm):
            errors.append("model.g_norm / d_norm = vbn: virtual batch norm's reference pass is not supported "
                          "with several processes")
        if errors:
            raise ConfigError(errors)

    def data_stream(self, dataset, batch_size: int, seed: int, device: torch.device, *, workers=None) -> DataStream:
        if not self.enabled:
            return DataStream(dataset, batch_size, seed, device, workers=workers)
        return ShardedDataStream(dataset, batch_size, seed, device, rank=self.rank, world_size=self.world_size,
                                 workers=workers)

    def sync_batch_norm(self, model: nn.Module) -> nn.Module:
        """Every batch norm of ``model`` synchronized (same parameter objects): fused ones become
        ``SyncBatchNormAct``; plain ``nn.BatchNorm`` ones ``nn.SyncBatchNorm`` on CUDA (it has no CPU
        kernels) and a pure-PyTorch ``SyncBatchNormAct`` (impl='ref') on CPU."""
        if not self.enabled:
            return model
        from ..nn import PixelShuffleUpsample, convert_sync, from_batch_norm

        model = convert_sync(model)

        def swap_plain(parent: nn.Module) -> None:
            for name, child in parent.named_children():
                if isinstance(child, PixelShuffleUpsample):
                    if child.norm is not None:
                        warnings.warn("fastgan train: PixelShuffleUpsample's batch norm keeps per-rank statistics "
                                      "under torch.distributed", RuntimeWarning, stacklevel=3)
                    continue
                if type(child) in (nn.BatchNorm1d, nn.BatchNorm2d):
                    ref = child.weight if child.weight is not None else child.running_mean
                    if ref is not None and ref.device.type == "cuda":
                        new = nn.SyncBatchNorm.convert_sync_batchnorm(child)
                    else:
                        new = convert_sync(from_batch_norm(child, impl="ref"))
                        if child.affine:
                            new.weight, new.bias = child.weight, child.bias
                    setattr(parent, name, new)
                else:
                    swap_plain(child)

        swap_plain(model)
        return model

    def ddp(self, module: nn.Module):
        """``module`` wrapped for DDP training forwards (itself when not distributed)."""
        if not self.enabled:
            return module
        device = next(module.parameters()).device
        return DDPModule(module, device)

    # -- per step ------------------------------------------------------------------------------
    def shard(self, t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """This rank's rows of a tensor drawn for the global batch."""
        if t is None or not self.enabled:
            return t
        return t[self.rank::self.world_size]

    def add_instance_noise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """``tricks.add_instance_noise`` with the noise drawn for the global batch (in x's memory format) and
        this rank's rows kept: every rank's noise differs, and equals the one-process run's."""
        if not self.enabled or sigma <= 0:
            return add_instance_noise(x, sigma)
        fmt = torch.channels_last if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last) else torch.contiguous_format
        big = torch.empty((x.shape[0] * self.world_size, *x.shape[1:]), dtype=x.dtype, device=x.device,
                          memory_format=fmt)
        return x + sigma * self.shard(torch.randn_like(big))

    def penalty_kwargs(self, penalty, kind: str, real: torch.Tensor) -> dict:
        """The interpolation weights of a due wgan-gp / wgan-lp penalty drawn for the global batch (the draw
        ``gradient_penalty`` would make, at the same point of the RNG stream), this rank's share passed as
        ``epsilon``.  DRAGAN's perturbation is drawn per rank (docs/distributed.md)."""
        if not self.enabled or kind not in ("wgan-gp", "wgan-lp") or not penalty.due():
            return {}
        dtype = torch.float64 if real.dtype == torch.float64 else torch.float32
        return {"epsilon": self.shard(torch.rand(real.shape[0] * self.world_size, device=real.device, dtype=dtype))}

    def _reduce(self, values: list[float], device: torch.device, op) -> list[float]:
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=op)
        return t.tolist()

    def all_true(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` holds on every rank (so that all ranks take or skip an update together)."""
        if not self.enabled:
            return bool(flag)
        import torch.distributed as dist

        return self._reduce([1.0 if flag else 0.0], device, dist.ReduceOp.MIN)[0] > 0.5

    def all_true_on_device(self, flag: torch.Tensor) -> torch.Tensor:
        """``all_true`` of a 0-d bool tensor, left on its device: the all-reduce is queued like a kernel, so
        nothing waits for it (the trainer's device-side skip of a non-finite update)."""
        if not self.enabled:
            return flag
        import torch.distributed as dist

        t = flag.to(torch.float32)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return t > 0.5

    def wait_for_all(self, device: torch.device) -> None:
        """Every rank here before any goes on: at the end of a run, so that no rank exits (and tears its
        process group down) while rank 0 still writes the final checkpoint, samples and plots -- torchrun
        then saw an abort at exit, and ended the finished run with a failure code."""
        if not self.enabled:
            return
        import torch.distributed as dist

        self._reduce([0.0], device, dist.ReduceOp.SUM)  # (a collective on the run's device: gloo and nccl alike)

    def any_true(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` holds on some rank (a stop request)."""
        if not self.enabled:
            return bool(flag)
        import torch.distributed as dist

        return self._reduce([1.0 if flag else 0.0], device, dist.ReduceOp.MAX)[0] > 0.5

    def stop_reason(self, reason: Optional[str], device: torch.device) -> Optional[str]:
        """This rank's stop request, or one standing for another rank's: every rank stops after the same step
        (one collective per step, so every rank calls it every step)."""
        if not self.enabled:
            return reason
        anyone = self.any_true(bool(reason), device)
        return reason or ("a stop request (SIGTERM) on another rank" if anyone else None)

    def mean_value(self, value: float, device: torch.device) -> float:
        """``value`` averaged over the ranks: decisions taken on it (loss balancing) agree on every rank,
        as DDP needs (a rank that skips a backward the others run would hang them)."""
        if not self.enabled:
            return float(value)
        import torch.distributed as dist

        return self._reduce([float(value)], device, dist.ReduceOp.SUM)[0] / self.world_size

    def mean_stats(self, stats: dict, device: torch.device) -> dict:
        """The float entries of a step's statistics averaged over the ranks (global-batch means)."""
        if not self.enabled:
            return stats
        import torch.distributed as dist

        keys = sorted(k for k, v in stats.items() if isinstance(v, float))
        means = self._reduce([stats[k] for k in keys], device, dist.ReduceOp.SUM)
        return {**stats, **{k: v / self.world_size for k, v in zip(keys, means)}}

    def sync_rng(self, device: torch.device) -> None:
        """Rank 0's torch RNG state (CPU, and this rank's GPU) on every rank: the draws stay identical."""
        if not self.enabled:
            return
        import torch.distributed as dist

        comm = device if device.type == "cuda" else torch.device("cpu")
        states = [torch.get_rng_state()]
        if device.type == "cuda":
            states.append(torch.cuda.get_rng_state(device))
        for i, s in enumerate(states):
            buf = s.to(comm)
            dist.broadcast(buf, src=0)
            states[i] = buf.cpu()
        torch.set_rng_state(states[0])
        if device.type == "cuda":
            torch.cuda.set_rng_state(states[1], device)


def _destroy_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
