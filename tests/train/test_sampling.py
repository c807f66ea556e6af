import random

import numpy as np
import torch
from torch.utils.data import Dataset

from ssdcli.train.sampling import EpochSampler, SeededSamples


def test_order_depends_only_on_seed_and_epoch():
    a, b = EpochSampler(50, True, seed=7), EpochSampler(50, True, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)
    assert sorted(a) == list(range(50))


def test_skip_resumes_mid_epoch():
    sampler = EpochSampler(20, True, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, skip=8)
    assert list(sampler) == full[8:] and len(sampler) == 12


def test_ranks_partition_the_epoch():
    ranks = [EpochSampler(10, True, seed=0, rank=r, world_size=3) for r in range(3)]
    for s in ranks:
        s.set_epoch(1)
    parts = [list(s) for s in ranks]
    assert all(len(p) == 4 for p in parts)  # ceil(10 / 3), padded by wrapping
    assert set().union(*map(set, parts)) == set(range(10))


def test_no_shuffle_is_identity():
    assert list(EpochSampler(5, False, seed=3)) == [0, 1, 2, 3, 4]


class RandomItems(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.rand(1).item(), random.random(), float(np.random.rand())


def test_seeded_samples_are_reproducible_and_leave_global_rng_alone():
    data = SeededSamples(RandomItems(), seed=5)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = [data[i] for i in range(4)]
    assert torch.equal(torch.get_rng_state(), before)
    assert [data[i] for i in reversed(range(4))] == list(reversed(first))
    data.epoch = 1
    assert data[0] != first[0]
