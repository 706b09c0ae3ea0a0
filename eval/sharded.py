"""Sharded feature extraction: `ssl-eval features ... --shards N [--slurm | --local]`.

Each split is cut into N slices on batch boundaries, so a slice runs exactly the batches one process would
and the joined features equal a single process's. Slice i of every split is one task of a submitit array
(`map_array`: SLURM with --slurm, submitit's LocalExecutor with --local, this process without either).
A task writes its slices as memory-mapped files plus a manifest (eval/slices.py); a re-run extracts only
the slices that are missing or stale (another slicing, another key, a partial write), then joins them.
The protocols find the joined set through the feature store and read it memory-mapped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import submitit
from torch.utils.data import Dataset, IterableDataset, Subset

from eval.config import load_eval_config
from eval.extract import Adapter
from eval.slices import SliceSet, load_joined
from eval.store import FeatureStore
from ssl_distill.launch.executors import make_executor


def slice_bounds(count: int, batch_size: int, shards: int) -> list[tuple[int, int]]:
    """(start, stop) of up to `shards` slices of `count` items, each a whole number of batches (the
    last may end with the last, shorter batch)."""
    per = math.ceil(math.ceil(count / batch_size) / shards) * batch_size
    return [(start, min(start + per, count)) for start in range(0, count, per)]


def _part(source: Dataset, start: int, stop: int) -> Dataset:
    return source.subset(start, stop) if isinstance(source, IterableDataset) else Subset(source, range(start, stop))


def split_slices(store: FeatureStore, split: str, pooling: str, shards: int) -> tuple[Adapter, SliceSet]:
    adapter, key = store.adapted_key(split, pooling)
    bounds = slice_bounds(len(store.source(split)), store.cfg.data.batch_size, shards)
    return adapter, SliceSet(store.cache.folder(key), key, bounds)


class SliceJob:
    """Extract slice `index` of every split in `features.splits` (one array task); returns the samples
    written per split. Requeued on preemption (submitit calls `checkpoint`), it starts that slice over."""

    def __init__(self, backbone: str, data: str, overrides: Sequence[str], shards: int) -> None:
        self.backbone, self.data, self.overrides, self.shards = backbone, data, list(overrides), shards

    def __call__(self, index: int) -> dict[str, int]:
        cfg = load_eval_config(self.data, self.overrides)
        store = FeatureStore(self.backbone, cfg)
        written = {}
        for split in cfg.features.splits:
            adapter, slices = split_slices(store, split, cfg.features.pooling, self.shards)
            if index < len(slices.bounds) and not slices.slice_valid(index):
                start, stop = slices.bounds[index]
                part = _part(store.source(split), start, stop)
                slices.write_slice(index, store.extract(split, adapter, cfg.features.pooling, part))
                written[split] = stop - start
        return written

    def checkpoint(self, index: int) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(self, index)


def extract_sharded(
    backbone: str, data: str, overrides: Sequence[str], shards: int, launch: str | None = None, out: str | Path = "."
) -> list[dict[str, Any]]:
    """Extract the features of every split in `features.splits` as `shards` slices (launch: 'slurm',
    'local' or None for this process; submitit logs under `out`/submitit) and join them. Returns a row
    per split: samples, dim, slices, how many were extracted now, wall seconds, folder."""
    if shards < 1:
        raise ValueError(f"--shards must be >= 1, got {shards}")
    cfg = load_eval_config(data, list(overrides))
    if not cfg.run.cache:
        raise ValueError("--shards writes the features into the cache: run.cache must stay true")
    store = FeatureStore(backbone, cfg)
    sets = {split: split_slices(store, split, cfg.features.pooling, shards)[1] for split in cfg.features.splits}
    pending = {split: s.missing() for split, s in sets.items() if load_joined(s.folder, s.key) is None}
    todo = sorted(set().union(*pending.values()))
    job = SliceJob(backbone, data, overrides, shards)
    start = time.perf_counter()
    if todo and launch is None:
        for index in todo:
            job(index)
    elif todo:
        executor = make_executor(cfg.slurm, Path(out) / "submitit", "eval-features", local=launch == "local")
        failed = []
        for index, task in zip(todo, executor.map_array(job, todo)):
            try:
                task.result()
            except Exception as error:  # a task's own error, named in the message below
                failed.append(f"slice {index} (job {task.job_id}): {str(error).strip().splitlines()[-1][:200]}")
        if failed:
            raise RuntimeError(
                f"{len(failed)} of {len(todo)} slice jobs failed: {'; '.join(failed)}. "
                "Run the same command again to extract only the missing slices."
            )
    seconds = round(time.perf_counter() - start, 3)
    rows = []
    for split, slices in sets.items():
        if split in pending:
            slices.join()
        features = load_joined(slices.folder, slices.key)
        rows.append(
            {
                "split": split, "samples": len(features), "dim": features.feats.shape[-1], "slices": len(slices.bounds),
                "extracted": len(pending.get(split, [])), "seconds": seconds, "folder": str(slices.folder),
            }
        )
    return rows
