"""torchrun / DistributedDataParallel plumbing; every helper is a no-op in a single process."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def device_of(name: str, ctx: Context = Context()) -> torch.device:
    """The config's `device` ('auto' = CUDA when present); each rank takes its local GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and ctx.enabled:
        name = f"cuda:{ctx.local_rank}"
    return torch.device(name)


def setup(device_type: str) -> Context:
    """Join the process group torchrun describes in the environment (if any)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Context()
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def cleanup(ctx: Context) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.enabled:
        dist.barrier()


class GatherRows(torch.autograd.Function):
    """Every rank's rows in rank order; each rank's rows get their gradient summed over all ranks."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, world_size: int, rank: int) -> torch.Tensor:
        ctx.rows = slice(rank * x.shape[0], (rank + 1) * x.shape[0])
        return gather(x, Context(rank, world_size))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()  # all_reduce works in place; autograd may still hold this tensor
        dist.all_reduce(grad)
        return grad[ctx.rows], None, None


def gather_with_grad(x: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Concatenate every rank's rows in rank order; gradients flow back to each rank's own rows."""
    if not ctx.enabled:
        return x
    return GatherRows.apply(x, ctx.world_size, ctx.rank)


def broadcast_object(obj, ctx: Context):
    """Rank 0's value of a picklable object on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(x: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Concatenate every rank's rows in rank order (no gradient)."""
    if not ctx.enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(ctx.world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)
