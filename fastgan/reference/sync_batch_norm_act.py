"""Reference synchronized batch norm + activation: statistics over every rank of a process group.

Each rank computes its (count, mean, M2) per channel; the rows of all ranks
are gathered and merged exactly with Chan et al.'s parallel formula, so
ranks may hold different batch sizes (an empty one included).  The gather
is ``torch.distributed.nn.functional.all_reduce`` of a table in which each
rank fills its own row (``AllReduceSum``): a collective whose backward is
itself an all-reduce, so this reference is differentiable to any order
(torch's differentiable all-gather needs a reduce-scatter, which gloo lacks).  Per-rank gradients follow
``nn.SyncBatchNorm``'s convention: the input gradient is that of the sum of
every rank's loss, weight and bias gradients are this rank's share (DDP
averages them).
"""
from __future__ import annotations

from typing import Optional

import torch

from .._activation import apply_activation
from .batch_norm_act import channel_view_shape

#: the gathered statistics are merged in float64: per-rank counts above 2**24 stay exact
MERGE_DTYPE = torch.float64


def group_size_and_rank(group) -> tuple[int, int]:
    import torch.distributed as dist

    return dist.get_world_size(group), dist.get_rank(group)


class AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; its backward is the same all-reduce of the gradients, so it is differentiable to
    any order (``torch.distributed.nn.functional.all_reduce`` does the same but is deprecated)."""

    @staticmethod
    def forward(ctx, t, group):
        import torch.distributed as dist

        ctx.group = group
        t = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(t, group=group)
        return t

    @staticmethod
    def backward(ctx, grad):
        return AllReduceSum.apply(grad, ctx.group), None


def gather_rows(row: torch.Tensor, group=None, differentiable: bool = True) -> torch.Tensor:
    """(world, *row.shape): every rank's ``row``, as an all-reduce of a table holding this rank's row only."""
    import torch.distributed as dist

    world, rank = group_size_and_rank(group)
    zero = torch.zeros_like(row)
    table = torch.stack([row if r == rank else zero for r in range(world)])
    if differentiable:
        return AllReduceSum.apply(table, group)
    table = table.contiguous()
    dist.all_reduce(table, group=group)
    return table


def merge_moments(table: torch.Tensor):
    """Chan et al.'s merge of per-rank rows (count, mean, M2), each (world, C): (count, mean, M2) overall.

    An empty rank (count 0) contributes nothing; with no element anywhere the mean is 0."""
    counts, means, m2s = table[:, 0], table[:, 1], table[:, 2]
    total = counts.sum(0)
    mean = (counts * means).sum(0) / total.clamp_min(1)
    delta = means - mean
    m2 = m2s.sum(0) + (counts * delta * delta).sum(0)
    return total, mean, m2


def local_moments(x: torch.Tensor) -> torch.Tensor:
    """(3, C) rows (count, mean, M2) of x per channel over (N, *spatial), in float64; an empty x gives zeros."""
    xc = x.to(MERGE_DTYPE)
    dims = [0] + list(range(2, x.dim()))
    count = x.numel() // max(x.shape[1], 1)
    mean = xc.sum(dims) / max(count, 1)
    m2 = ((xc - mean.view(channel_view_shape(x))) ** 2).sum(dims)
    return torch.stack([torch.full_like(mean, float(count)), mean, m2])


@torch.no_grad()
def update_running_stats_global(running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
                                mean: torch.Tensor, var: torch.Tensor, total: torch.Tensor, momentum: float) -> None:
    """Running averages with the unbiased variance of all ranks' elements (count ``total``, a tensor:
    no host synchronisation), as ``nn.SyncBatchNorm`` keeps them.  Where every rank's batch was empty
    they are left as they were (one process on the empty joined batch leaves them); where the ranks
    held one value per channel in all, the running variance is (its unbiased estimate is undefined:
    one process refuses that batch, which would take a host synchronisation to see here)."""
    if running_mean is not None:
        updated = running_mean * (1.0 - momentum) + mean.to(running_mean.dtype) * momentum
        running_mean.copy_(torch.where(total > 0, updated, running_mean))
    if running_var is not None:
        unbiased = var.to(MERGE_DTYPE) * (total / (total - 1).clamp_min(1))
        updated = running_var * (1.0 - momentum) + unbiased.to(running_var.dtype) * momentum
        running_var.copy_(torch.where(total > 1, updated, running_var))


def sync_batch_norm_act(x: torch.Tensor, running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
                        weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], momentum: float, eps: float,
                        activation: str = "leaky_relu", negative_slope: float = 0.2, process_group=None
                        ) -> torch.Tensor:
    """Training-mode batch norm + activation with statistics of the whole process group.

    Every rank of ``process_group`` (default: the world) must call it, and
    later backpropagate through it, in the same order."""
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    table = gather_rows(local_moments(x), process_group, differentiable=True)
    total, mean, m2 = merge_moments(table)
    var = m2 / total.clamp_min(1)
    update_running_stats_global(running_mean, running_var, mean.detach(), var.detach(), total.detach(), momentum)
    shape = channel_view_shape(x)
    mean, var = mean.to(compute_dtype), var.to(compute_dtype)
    y = (x.to(compute_dtype) - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps)
    if weight is not None:
        y = y * weight.to(compute_dtype).view(shape)
    if bias is not None:
        y = y + bias.to(compute_dtype).view(shape)
    return apply_activation(y, activation, negative_slope).to(x.dtype)
