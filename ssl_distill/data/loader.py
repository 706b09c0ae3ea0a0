"""Batches with an exactly reproducible order and augmentation, so that a resumed run sees the
same data as an uninterrupted one.

The sampler yields (index, sample_seed) pairs drawn from (seed, epoch); the dataset seeds the
transform of each sample with its sample_seed. Resuming at batch b of epoch e is
`sampler.set_epoch(e, start_batch=b)`; an `endless` sampler then runs on through the following
epochs, so one loader (and its workers) serves a whole run. Under DDP each rank takes every
world-th position.
"""

from __future__ import annotations

import contextlib
import random
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

Key = tuple[int, int] | int  # (index, sample_seed), or an index that is its own seed


def seed_rngs(seed: int) -> None:
    """Seed torch's CPU generator and numpy's and python's global RNGs. The same CPU stream as
    `torch.manual_seed`, which also reseeds every CUDA generator (and costs ~170 us)."""
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


@contextlib.contextmanager
def kept_rng_states() -> Iterator[None]:
    """Restore torch's CPU, numpy's and python's global RNG states on exit."""
    torch_state, py_state, np_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(py_state)
        np.random.set_state(np_state)


def seeded_call(seed: int, fn: Callable[[], Any]) -> Any:
    """Run fn with torch's CPU, numpy's and python's RNGs seeded, leaving the callers' RNG states untouched."""
    with kept_rng_states():
        seed_rngs(seed)
        return fn()


def view_item(sample: Any, transform: Callable, index: int) -> dict[str, Any]:
    """A Sample -> {'views': [view tensors], 'label', 'index', 'skipped'[, 'mask']}; the transform draws
    from the global RNGs (seed them first)."""
    item = {"views": transform(sample.image), "label": sample.label, "index": index, "skipped": sample.skipped}
    if sample.mask is not None:
        item["mask"] = torch.as_tensor(np.asarray(sample.mask), dtype=torch.long)
    return item


class SeededDataset(Dataset):
    """Items that are a pure function of (index, sample_seed): `dataset[(index, seed)]` (or
    `dataset[index]`, seed = index) runs the subclass's `_item(index)` with the global RNGs seeded
    by `seed` (`seed_rngs`) and the caller's RNG states restored afterwards.

    DataLoader fetches a batch through `__getitems__`, which restores them once per batch: saving
    and restoring numpy's state alone costs ~70 us, seeding ~7 us an item.
    """

    def _item(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: Key) -> dict[str, Any]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[Key]) -> list[dict[str, Any]]:
        items = []
        with kept_rng_states():
            for key in keys:
                index, seed = key if isinstance(key, tuple) else (key, key)
                seed_rngs(seed)
                items.append(self._item(index))
        return items


class ViewDataset(SeededDataset):
    """Source + view transform -> {'views': [view tensors], 'label', 'index', 'skipped'[, 'mask']}, plus the
    per-item keys a source adds through `extras(index)` and declares in `extra_keys` (captions of image-text
    sources); a source with nearest-neighbour partners (`partner_index(index, seed)`, data/neighbors.py)
    adds 'partner_views' (the same transform on the partner image, with its own seed) and 'partner_index'."""

    provides = frozenset({"views", "label", "index", "skipped"})

    def __init__(self, source: Dataset, transform: Callable) -> None:
        self.source, self.transform = source, transform
        self.provides = ViewDataset.provides | frozenset(getattr(source, "extra_keys", ()))
        self.partners = hasattr(source, "partner_index")
        if self.partners:
            self.provides = self.provides | {"partner_views", "partner_index"}

    def __len__(self) -> int:
        return len(self.source)

    def _item(self, index: int) -> dict[str, Any]:
        item = view_item(self.source[index], self.transform, index)
        if hasattr(self.source, "extras"):
            item.update(self.source.extras(index))  # under the item's seed, after the views
        if self.partners:  # a nearest-neighbour partner (data/neighbors.py) with its own crops
            partner_seed = int(torch.randint(2**31, ()))  # drawn under the item's seed: not the anchor's
            item["partner_index"] = self.source.partner_index(index, partner_seed)
            partner = self.source[item["partner_index"]]
            item["partner_views"] = seeded_call(partner_seed, lambda: self.transform(partner.image))
        return item


class ResumableSampler(Sampler):
    """Seeded per-epoch permutation, split across ranks, that can start at any batch.

    Iteration covers epoch `epoch` from batch `start_batch` (`set_epoch`); with `endless=True` it
    goes on through epoch + 1, epoch + 2, ... (from their first batch) without end.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        endless: bool = False,
    ):
        if size < batch_size * world_size:
            raise ValueError(f"dataset has {size} samples, fewer than one global batch ({batch_size} x {world_size})")
        self.size, self.batch_size, self.seed, self.shuffle = size, batch_size, seed, shuffle
        self.rank, self.world_size, self.endless = rank, world_size, endless
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.size // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.size, generator=generator) if self.shuffle else torch.arange(self.size)
        seeds = torch.randint(0, 2**31 - 1, (self.size,), generator=generator)
        used = self.batches_per_epoch * self.batch_size * self.world_size
        return order[:used], seeds[order[:used]]

    def _epoch(self, epoch: int, start_batch: int) -> Iterator[tuple[int, int]]:
        order, seeds = self._order(epoch)
        positions = range(self.rank, len(order), self.world_size)
        for position in list(positions)[start_batch * self.batch_size :]:
            yield int(order[position]), int(seeds[position])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        yield from self._epoch(self.epoch, self.start_batch)
        epoch = self.epoch + 1
        while self.endless:
            yield from self._epoch(epoch, 0)
            epoch += 1

    def __len__(self) -> int:
        if self.endless:
            raise TypeError("an endless ResumableSampler has no length")
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader workers leave the stop signals to the main process: SLURM and Ctrl-C signal the whole
    process group, and a worker killed by one would take the run down before it can checkpoint."""
    for name in STOP_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_IGN)


def build_loader(dataset: Dataset, sampler: ResumableSampler | Any, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Batches of `sampler.batch_size` in `sampler`'s order. The loader's own generator draws the workers'
    base seed, so iterating never touches the global RNG (items are seeded by their sample seed anyway).
    A stream (IterableDataset, data/shards.py) orders, splits and batches itself, and `sampler` is then
    the stream too."""
    if isinstance(dataset, IterableDataset):
        return DataLoader(
            dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, generator=torch.Generator(),
            worker_init_fn=ignore_stop_signals if num_workers else None,
        )
    return DataLoader(
        dataset,
        batch_size=sampler.batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=True,
        pin_memory=pin_memory,
        generator=torch.Generator(),
        worker_init_fn=ignore_stop_signals if num_workers else None,
    )
