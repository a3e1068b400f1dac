"""Batches of distinct training identities, as a pure function of (seed, iteration)."""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class IdentityBatchSampler(Sampler):
    """Endless batches for iterations start_iteration, start_iteration + 1, ...

    Each epoch is one seeded permutation of the identities cut into global
    batches of `batch_size` (the last partial batch dropped), so a batch never
    holds an identity twice; rank r of `world_size` takes the r-th slice of every
    global batch. Each index comes with its epoch, from which the dataset seeds
    that item's random draws, so what an iteration sees does not depend on
    workers, ranks or resumes.
    """

    def __init__(self, num_identities: int, batch_size: int, *, seed: int = 0, start_iteration: int = 1,
                 rank: int = 0, world_size: int = 1):
        if num_identities < batch_size:
            raise ValueError(f"training.batch_size={batch_size} is larger than the {num_identities} "
                             "training identities")
        self.num_identities = num_identities
        self.batch_size = batch_size
        self.seed = seed
        self.start_iteration = start_iteration
        self.local_size = batch_size // world_size
        self.offset = rank * self.local_size
        self.batches_per_epoch = num_identities // batch_size

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        """(identity index, epoch) pairs of this rank's share of global batch `iteration` (1-based)."""
        epoch, position = divmod(iteration - 1, self.batches_per_epoch)
        order = torch.randperm(self.num_identities, generator=torch.Generator().manual_seed(self.seed + epoch))
        first = position * self.batch_size + self.offset
        return [(identity, epoch) for identity in order[first:first + self.local_size].tolist()]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        iteration = self.start_iteration
        while True:
            yield self.batch(iteration)
            iteration += 1
