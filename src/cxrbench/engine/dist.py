"""Multi-process data parallel under ``torchrun``: environment -> process group, device, reductions."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # True when fit() created the process group (and so destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """auto -> cuda:<local_rank> when available else cpu; 'cuda' without a GPU is an error."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("engine.device = 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_choice: str) -> tuple[DistInfo, torch.device]:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun) and join the process group: gloo on CPU, nccl on
    CUDA. Without those variables (or WORLD_SIZE=1) this is a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device_choice)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_choice, local)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return DistInfo(rank, world, local, owns), device


def all_mean(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Average a dict of floats over ranks (same keys on every rank)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist(), strict=True)}


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if ``flag`` is True on any rank."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def broadcast(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order (on every rank)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient of the gathered tensor and returns this rank's slice
    (what ``torch.distributed.nn.all_gather`` does; written with all_reduce, which gloo supports)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) per process -> (world_size * B, ...) in rank order, differentiable; ``x`` itself outside torchrun.

    Used for the negatives of a contrastive loss (open_clip ``src/open_clip/loss.py`` ``gather_features`` with
    ``gather_with_grad``): every rank computes the loss of the whole global batch, and the backward all-reduce hands
    each rank the gradient that all ranks' losses send to its own rows. The engine's DDP averages parameter
    gradients over ranks, so loss and gradients equal one process holding the whole global batch (every rank must
    pass the same B: the engine's sampler gives each rank equal batches)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
