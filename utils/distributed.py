"""torchrun / DistributedDataParallel plumbing; every helper is a no-op in a single process."""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from utils.errors import ConfigError, UserError
from utils.lock import process_alive


@dataclass
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # The launcher's key-value store, for the notes that name a failed rank (register_process); None alone.
    notes: dist.Store | None = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched() -> bool:
    """Started by torchrun (or another launcher) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def device_of(name: str, ctx: Context = Context()) -> torch.device:
    """The config's `device` ('auto' = CUDA when present); each rank takes its local GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and ctx.enabled:
        name = f"cuda:{ctx.local_rank}"
    return torch.device(name)


def check_device(name: str) -> None:
    """The config's `device` exists on this machine: else a ConfigError naming the key (before any work)."""
    if not name.startswith("cuda"):
        return
    count = torch.cuda.device_count()
    index = int(name.split(":")[1]) if ":" in name else 0
    if index >= count:
        raise ConfigError(f"config key 'device' is {name!r}, but this machine has "
                          f"{count or 'no'} CUDA device{'s' if count != 1 else ''}; use 'auto' or 'cpu'")


def setup(device_name: str, timeout_minutes: float) -> Context:
    """Join the process group torchrun describes in the environment (if any).

    Each rank first makes its own GPU (LOCAL_RANK) the current device, so that collectives and
    object collectives never put two ranks' tensors on one GPU.
    """
    if not launched():
        return Context()
    if name_has_index(device_name):
        raise ConfigError(f"config key 'device' is {device_name!r}: under torchrun every process takes the GPU "
                          "of its LOCAL_RANK; use 'cuda' or 'auto' (and CUDA_VISIBLE_DEVICES to choose GPUs)")
    world_size, local_rank = int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = device_of(device_name, Context(0, world_size, local_rank))
    options = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        options["device_id"] = device
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                            timeout=timedelta(minutes=timeout_minutes), **options)
    return Context(dist.get_rank(), dist.get_world_size(), local_rank)


def register_process(ctx: Context) -> None:
    """Note where this rank runs in the launcher's store, so that the others can name it if it vanishes
    (kill -9, out of memory), or read why it failed (stop_after_failure).

    The notes go through a client of that store of our own, under a prefix of their own: the launcher keeps the
    store after any rank is gone."""
    if ctx.enabled:
        launcher = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False)
        ctx.notes = dist.PrefixStore("aasm/", launcher)
        ctx.notes.set(PROCESS_KEY.format(ctx.rank), f"{os.getpid()} {socket.gethostname()}")


def name_has_index(device_name: str) -> bool:
    return ":" in device_name


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


def any_rank(flag: bool, ctx: Context, device: torch.device) -> bool:
    """True on every rank when `flag` is true on at least one (a collective: call it on every rank)."""
    if not ctx.enabled:
        return flag
    box = torch.tensor([int(flag)], device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return bool(box.item())


class RankFailed(UserError):
    """Another process of the run failed; this one stops too."""


FAILURE_KEY = "aasm/failed/{}"
PROCESS_KEY = "aasm/process/{}"
VANISH_CHECKS = 10


def on_main(fn, ctx: Context, *args):
    """`fn(*args)` run on rank 0 only, its result broadcast to every rank (call it on every rank).

    An exception raised there is raised on every rank: the original on rank 0, RankFailed naming it
    on the others, so no rank waits for a decision that never comes.
    """
    if not ctx.enabled:
        return fn(*args)
    result, failure = None, None
    if ctx.is_main:
        try:
            result = fn(*args)
        except Exception as e:
            failure = e
    result, message = broadcast_object((result, None if failure is None else str(failure)), ctx)
    if failure is not None:
        raise failure
    if message is not None:
        raise RankFailed(f"stopping: rank 0 failed: {message}")
    return result


def stop_after_failure(error: BaseException, ctx: Context) -> BaseException:
    """The error this rank should stop with: RankFailed naming the rank that failed first, if another did.

    A rank that fails on its own leaves a note in the launcher's store, so that the others, whose next
    collective then breaks, say which rank failed and why instead of a bare connection error. A rank that
    left no note (killed) is named when its process is gone from this host.
    """
    if ctx.notes is None or isinstance(error, RankFailed):
        return error
    store = ctx.notes
    try:
        others = [rank for rank in range(ctx.world_size) if rank != ctx.rank]
        for rank in others:
            if store.check([FAILURE_KEY.format(rank)]):
                message = store.get(FAILURE_KEY.format(rank)).decode(errors="replace")
                return RankFailed(f"rank {ctx.rank} stopping: rank {rank} failed: {message}")
        # A killed process closes its sockets a moment before it is gone: a lost connection looks again.
        for attempt in range(VANISH_CHECKS if lost_connection(error) else 1):
            if attempt:
                time.sleep(0.1)
            for rank in others:
                gone = vanished_process(store, rank)
                if gone:
                    return RankFailed(f"rank {ctx.rank} stopping: rank {rank} ({gone}) ended without a message "
                                      "(killed, or out of memory); continue the run with --resume auto")
        store.set(FAILURE_KEY.format(ctx.rank), f"{type(error).__name__}: {error}")
    except Exception:  # the store itself may be gone with the launcher; the original error still stands
        pass
    return error


def lost_connection(error: BaseException) -> bool:
    """A collective that broke because a peer went away (gloo: 'Connection reset by peer', 'Broken pipe')."""
    return isinstance(error, dist.DistError) or any(text in str(error) for text in ("Connection", "Broken pipe"))


def vanished_process(store, rank: int) -> str | None:
    """'pid N' when `rank` ran on this host and its process is gone, else None."""
    if not store.check([PROCESS_KEY.format(rank)]):
        return None
    pid, host = store.get(PROCESS_KEY.format(rank)).decode().split()
    return f"pid {pid}" if host == socket.gethostname() and not process_alive(int(pid)) else None


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover every rank's rows, on any device.

    torch's SyncBatchNorm runs on GPUs only; this twin lets CPU (gloo) runs normalise over the global
    batch too, so that they train exactly like one process on the whole batch.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dtype = x.dtype
        # The statistics in float32 at least, as batch_norm keeps them: under bf16 autocast the convolution hands
        # over bf16, which can count the 81,920 positions of a 64-px batch only to 81,920 ± 256.
        x = x.to(torch.promote_types(dtype, torch.float32))
        dims = (0, 2, 3)
        count = sum_over_ranks(torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype))
        mean = sum_over_ranks(x.sum(dims)) / count
        centred = x - mean[None, :, None, None]
        variance = sum_over_ranks(centred.square().sum(dims)) / count
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_((variance.detach() * count / (count - 1)).to(self.running_var.dtype), self.momentum)
        scale = self.weight / (variance + self.eps).sqrt()
        return (centred * scale[None, :, None, None] + self.bias[None, :, None, None]).to(dtype)


class SumOverRanks(torch.autograd.Function):
    """all_reduce(sum) forward; backward too, since every rank holds a copy of the same global loss."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    return SumOverRanks.apply(x) if dist.is_initialized() else x


def convert_to_global_batch_norm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d of `module` replaced in place by a GlobalBatchNorm sharing its parameters and buffers."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                          child.track_running_stats)
            # The same parameter and buffer objects, so an optimizer built before still updates them.
            replacement.weight, replacement.bias = child.weight, child.bias
            replacement.running_mean, replacement.running_var = child.running_mean, child.running_var
            replacement.num_batches_tracked = child.num_batches_tracked
            replacement.train(child.training)
            setattr(module, name, replacement)
        else:
            convert_to_global_batch_norm(child)
    return module


def wrap_module(module: nn.Module, ctx: Context, device: torch.device) -> nn.Module:
    """`module` itself in one process; else under DDP, its batch norm over the global batch."""
    if not ctx.enabled:
        return module
    if device.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    else:  # torch's SyncBatchNorm is GPU-only
        convert_to_global_batch_norm(module)
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def gather_batch(embeddings: tuple[torch.Tensor, ...], labels: torch.Tensor, ctx: Context) -> tuple:
    """The embedding batches and the labels of the whole global batch, in float32, on every rank.

    Each rank's loss is then the global one and its gradient reaches every rank's rows, so DDP's average
    over ranks is the single-process gradient of the global batch. Every rank also sees the whole
    gathered batch, so state computed from it (the IE counters and weights) agrees on all ranks.
    """
    return (*(gather_with_grad(e.float(), ctx) for e in embeddings), gather(labels, ctx))
