"""Batches of distinct training identities and their clip windows, as a pure function of (seed, iteration)."""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

Window = tuple[int, int]  # (start, length) in samples


class IdentityBatchSampler(Sampler):
    """Endless batches for iterations start_iteration, start_iteration + 1, ...

    Each epoch is one seeded permutation of the identities cut into global batches of
    `batch_size` (the last partial batch dropped), so a batch never holds an identity twice;
    rank r of `world_size` takes the r-th slice of every global batch. Each item is
    (identity, epoch, windows): the dataset seeds the item's draws from its epoch, and `windows`
    are the two crops of the tiled clips, one (start, length) per clip shared by the whole batch,
    with length ~ U[crop_samples) (the release draws them in the forward pass). What an iteration
    sees depends on nothing but the seed: not on workers, ranks or resumes.
    """

    def __init__(self, num_identities: int, batch_size: int, *, crop_samples: tuple[int, int], clip_samples: int,
                 seed: int = 0, start_iteration: int = 1, rank: int = 0, world_size: int = 1):
        if num_identities < batch_size:
            raise ValueError(f"training.batch_size={batch_size} is larger than the {num_identities} "
                             "training identities")
        if not 0 < crop_samples[0] < crop_samples[1] <= clip_samples + 1:
            raise ValueError(f"training.crop_seconds {crop_samples} (in samples) must be an increasing range "
                             f"within the {clip_samples}-sample clips")
        self.num_identities = num_identities
        self.batch_size = batch_size
        self.crop_samples = crop_samples
        self.clip_samples = clip_samples
        self.seed = seed
        self.start_iteration = start_iteration
        self.local_size = batch_size // world_size
        self.offset = rank * self.local_size
        self.batches_per_epoch = num_identities // batch_size

    def windows(self, iteration: int) -> tuple[Window, Window]:
        """The crops of the first and the second clips at `iteration`."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + iteration)
        lo, hi = self.crop_samples
        lengths = lo + (torch.rand(2, generator=g, dtype=torch.float64) * (hi - lo)).long()
        starts = (torch.rand(2, generator=g, dtype=torch.float64) * (self.clip_samples - lengths + 1)).long()
        return (int(starts[0]), int(lengths[0])), (int(starts[1]), int(lengths[1]))

    def batch(self, iteration: int) -> list[tuple[int, int, tuple[Window, Window]]]:
        """This rank's share of global batch `iteration` (1-based)."""
        epoch, position = divmod(iteration - 1, self.batches_per_epoch)
        order = torch.randperm(self.num_identities, generator=torch.Generator().manual_seed(self.seed + epoch))
        first = position * self.batch_size + self.offset
        windows = self.windows(iteration)
        return [(identity, epoch, windows) for identity in order[first:first + self.local_size].tolist()]

    def __iter__(self) -> Iterator[list[tuple[int, int, tuple[Window, Window]]]]:
        iteration = self.start_iteration
        while True:
            yield self.batch(iteration)
            iteration += 1
