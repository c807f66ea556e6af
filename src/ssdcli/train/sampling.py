"""Reproducible, resumable data order and augmentation.

Two things make a resumed run identical to an uninterrupted one, on any number of workers:

- :class:`EpochSampler` derives each epoch's order from ``(seed, epoch)`` alone and can start at a
  given batch, so a run restarted mid-epoch skips the batches it already trained on without
  reading them;
- :class:`SeededSamples` draws each sample's augmentation from a generator seeded by
  ``(seed, epoch, index)``, so the random crop an image gets does not depend on which worker
  loaded it or on what ran before.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed unique to (run seed, epoch, sample index)."""
    return (seed * 1_000_003 + epoch) * 10_000_019 + index & 0x7FFF_FFFF_FFFF_FFFF


class EpochSampler(Sampler[int]):
    """Indices of one epoch for one process.

    The permutation is ``randperm(n)`` from a generator seeded with ``seed + epoch`` (identity
    order when ``shuffle`` is off), padded by wrapping to a multiple of ``world_size`` like
    ``DistributedSampler``, and this rank takes every ``world_size``-th index.
    """

    def __init__(self, num_samples: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if num_samples <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip = 0

    @property
    def per_rank(self) -> int:
        return math.ceil(self.num_samples / self.world_size)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch and skip its first ``skip`` indices of this rank (resume mid-epoch)."""
        self.epoch = epoch
        self.skip = skip

    def epoch_indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        total = self.per_rank * self.world_size
        order = (order * math.ceil(total / len(order)))[:total]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.skip :])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.skip)


class SeededSamples(Dataset):
    """Wraps a dataset so that sample ``i`` of epoch ``e`` always sees the same random numbers.

    torch, numpy and python ``random`` are seeded from ``(seed, epoch, index)`` around each
    ``__getitem__`` and restored afterwards, so the caller's random streams are untouched.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        seed = sample_seed(self.seed, self.epoch, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
