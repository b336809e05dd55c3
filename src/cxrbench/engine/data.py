"""The engine's data side: a seeded, resumable, sharded batch sampler and moving batches to the device."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """A permutation of range(n) that depends only on (seed, epoch) (numpy SeedSequence mixes the pair)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch)]))
    return rng.permutation(n).tolist()


class ResumableBatchSampler:
    """Yields this rank's batches of dataset indices for one epoch.

    The epoch's permutation is cut into global batches of ``batch_size * world_size`` indices; rank r takes the
    r-th contiguous slice of ``batch_size``, so the union over ranks of batch k is the single-process global
    batch k. ``drop_last=False`` keeps a last partial global batch (padded by wrapping around the permutation
    to a multiple of ``world_size`` so every rank gets a batch). ``set_epoch(e, skip)`` selects the epoch and
    skips its first ``skip`` batches (resume)."""

    def __init__(self, n: int, batch_size: int, seed: int, *, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True, shuffle: bool = True) -> None:
        if n < batch_size * world_size and drop_last:
            raise ValueError(f"dataset of {n} items is smaller than one global batch "
                             f"({batch_size} x {world_size} processes) with drop_last=True")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.drop_last, self.shuffle = drop_last, shuffle
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        g = self.batch_size * self.world_size
        return self.n // g if self.drop_last else -(-self.n // g)

    def _batches(self) -> list[list[int]]:
        order = epoch_permutation(self.n, self.seed, self.epoch) if self.shuffle else list(range(self.n))
        g = self.batch_size * self.world_size
        out = []
        for k in range(len(self)):
            chunk = order[k * g:(k + 1) * g]
            if len(chunk) < g:  # last partial global batch: split evenly, wrapping around to fill every rank
                per = -(-len(chunk) // self.world_size)
                chunk = (chunk + order)[: per * self.world_size]
                out.append(chunk[self.rank * per:(self.rank + 1) * per])
            else:
                out.append(chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size])
        return out

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()[self.skip:]


def to_device(batch: Any, device: torch.device) -> Any:
    """Recursively move the tensors of a (nested dict / list / tuple) batch to ``device``; others unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and not isinstance(batch, str):
        moved = [to_device(v, device) for v in batch]
        return type(batch)(moved) if isinstance(batch, tuple) and not hasattr(batch, "_fields") else moved
    return batch


def make_loader(dataset: Any, sampler: ResumableBatchSampler, *, num_workers: int, collate_fn: Any,
                seed: int, pin_memory: bool) -> torch.utils.data.DataLoader:
    """A DataLoader over ``sampler`` with its own generator, so creating an iterator (which draws the workers'
    base seed) never consumes the global torch RNG."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                       collate_fn=collate_fn, generator=gen, pin_memory=pin_memory,
                                       persistent_workers=False)
