"""Run a test function in N processes joined by a gloo process group, with a hard deadline.

Forked workers where they can be: the parent has imported torch, Triton and fastgan already,
and re-importing them per worker costs seconds.  Spawned ones with nccl, or once the parent's
autograd engine runs device threads: a forked child's backward then fails ("Unable to handle
autograd's threading in combination with fork-based multiprocessing"; seen under pytest-xdist
on the GPU, where earlier cases ran CUDA backwards, and on CPU after a torch.compile case had run
a backward in the same process).  A forked probe that runs one backward tells which.
Each worker sets one thread and a collective timeout, so a hang fails the test instead of
blocking CI; the parent kills workers that outlive the deadline.  An exception in a worker
fails the test with the worker's traceback.
"""
from __future__ import annotations

import datetime
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, fn, world_size, port, backend, args):
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=60))
    try:
        fn(rank, world_size, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _backward_probe() -> None:
    try:
        x = torch.ones(2, requires_grad=True)
        (x * 2).sum().backward()
    except RuntimeError:
        os._exit(1)  # (quietly: the caller spawns instead)


def _forked_backward_works() -> bool:
    """Whether a forked child of this process can run a backward (see the module docstring)."""
    probe = mp.get_context("fork").Process(target=_backward_probe)
    probe.start()
    probe.join(60)
    if probe.is_alive():
        probe.kill()
    return probe.exitcode == 0


def run_distributed(fn, world_size: int = 2, *args, timeout: float = 120.0, backend: str = "gloo") -> None:
    """``fn(rank, world_size, *args)`` in ``world_size`` processes of one process group (gloo on CPU; nccl:
    rank r on cuda:r, spawned since CUDA cannot be forked); raises on failure."""
    spawn = (backend == "nccl" or (torch.cuda.is_available() and torch.cuda.is_initialized())
             or not _forked_backward_works())
    ctx = mp.start_processes(_worker, args=(fn, world_size, free_port(), backend, args), nprocs=world_size,
                             join=False, start_method="spawn" if spawn else "fork")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
            if time.monotonic() > deadline:
                raise TimeoutError(f"distributed test did not finish within {timeout:.0f}s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
