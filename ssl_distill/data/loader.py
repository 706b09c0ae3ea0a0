"""Batches with an exactly reproducible order and augmentation, so that a resumed run sees the
same data as an uninterrupted one.

The sampler yields (index, sample_seed) pairs drawn from (seed, epoch); the dataset seeds the
transform of each sample with its sample_seed. Resuming at batch b of epoch e is
`sampler.set_epoch(e, start_batch=b)`. Under DDP each rank takes every world-th position.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def seeded_call(seed: int, fn: Callable[[], Any]) -> Any:
    """Run fn with torch, numpy and python RNGs seeded, leaving the callers' RNG states untouched."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            return fn()
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class ViewDataset(Dataset):
    """Source + view transform -> {'views': [view tensors], 'label', 'index'[, 'mask']}; a source with
    nearest-neighbour partners (`partner_index(index, seed)`, see data/neighbors.py) adds 'partner_views' (the
    same transform on the partner image, with its own seed) and 'partner_index'."""

    provides = frozenset({"views", "label", "index"})

    def __init__(self, source: Dataset, transform: Callable) -> None:
        self.source, self.transform = source, transform
        self.partners = hasattr(source, "partner_index")
        if self.partners:
            self.provides = ViewDataset.provides | {"partner_views", "partner_index"}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, key)
        sample = self.source[index]
        item = {"views": seeded_call(seed, lambda: self.transform(sample.image)), "label": sample.label, "index": index}
        if sample.mask is not None:
            item["mask"] = torch.as_tensor(np.asarray(sample.mask), dtype=torch.long)
        if self.partners:
            partner_seed = (seed * 2_654_435_761 + 1) % 2**31  # not the anchor's seed: other crops
            item["partner_index"] = self.source.partner_index(index, partner_seed)
            partner = self.source[item["partner_index"]]
            item["partner_views"] = seeded_call(partner_seed, lambda: self.transform(partner.image))
        return item


class ResumableSampler(Sampler):
    """Seeded per-epoch permutation, split across ranks, that can start at any batch."""

    def __init__(self, size: int, batch_size: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if size < batch_size * world_size:
            raise ValueError(f"dataset has {size} samples, fewer than one global batch ({batch_size} x {world_size})")
        self.size, self.batch_size, self.seed, self.shuffle = size, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.size // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _order(self) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator) if self.shuffle else torch.arange(self.size)
        seeds = torch.randint(0, 2**31 - 1, (self.size,), generator=generator)
        used = self.batches_per_epoch * self.batch_size * self.world_size
        return order[:used], seeds[order[:used]]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order, seeds = self._order()
        positions = range(self.rank, len(order), self.world_size)
        for position in list(positions)[self.start_batch * self.batch_size :]:
            yield int(order[position]), int(seeds[position])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


def build_loader(dataset: Dataset, sampler: ResumableSampler, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=sampler.batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=True,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
