"""Global-batch helpers for multi-process training.

Contrastive negatives (SimCLR, MoCo) and the stain affinity matrix (paper §3.2) must be computed
over the *global* batch, or the result changes with the number of GPUs. ``gather_with_grad``
concatenates every rank's shard and routes gradients back to the shard's owner.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist


class WorldInfo(NamedTuple):
    rank: int
    world_size: int


def world_info() -> WorldInfo:
    """This process's rank and the number of processes (0, 1 without torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return WorldInfo(dist.get_rank(), dist.get_world_size())
    return WorldInfo(0, 1)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums every rank's gradient and keeps this rank's slice.

    Summing makes the result exact whether each rank's loss covers the whole gathered batch or
    only its own rows: DDP's averaging of parameter gradients then gives the gradient of the
    mean loss.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.world_size = world_info()
        ctx.rows = tensor.shape[0]
        shards = [torch.empty_like(tensor) for _ in range(ctx.world_size)]
        dist.all_gather(shards, tensor.contiguous())
        return torch.cat(shards, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0 (rank order), keeping gradients.

    Identity when torch.distributed is not initialised. Every rank must pass the same shape.
    Tensors that do not require grad (keys, source ids) are gathered without autograd.
    """
    if world_info().world_size == 1:
        return tensor
    if tensor.requires_grad:
        return _GatherWithGrad.apply(tensor)
    shards = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(shards, tensor.contiguous())
    return torch.cat(shards, dim=0)
