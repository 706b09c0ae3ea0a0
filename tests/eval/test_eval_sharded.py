"""Sharded feature extraction: slices on batch boundaries, joined features equal to one process's, only
missing or stale slices redone, memory-mapped reading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import eval.store as store_module
from eval.config import load_eval_config
from eval.sharded import SliceJob, extract_sharded, slice_bounds, split_slices
from eval.slices import load_joined
from eval.store import FeatureStore

torch.set_num_threads(1)
TINY = ["model.img_size=32", "model.patch_size=8", "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.weights=none"]
BACKBONE = "vit_tiny_patch16_224"


def test_slice_bounds_fall_on_batch_boundaries():
    assert slice_bounds(100, 16, 3) == [(0, 48), (48, 96), (96, 100)]
    assert slice_bounds(64, 16, 4) == [(0, 16), (16, 32), (32, 48), (48, 64)]
    assert slice_bounds(10, 16, 4) == [(0, 10)]  # fewer batches than shards: fewer slices


def test_sharded_features_equal_one_process_and_only_missing_or_stale_slices_are_redone(tmp_path, monkeypatch):
    settings = [*TINY, "data.limit=50", "data.batch_size=8", "run.progress=false", f"run.cache_dir={tmp_path}", "features.splits=[train]"]
    job = SliceJob(BACKBONE, "shapes", settings, 3)
    assert job(0) == {"train": 24} and job(2) == {"train": 2}  # as if the task of slice 1 had failed
    store = FeatureStore(BACKBONE, load_eval_config("shapes", settings))
    _, slices = split_slices(store, "train", "cls", 3)
    assert slices.missing() == [1] and slices.bounds == [(0, 24), (24, 48), (48, 50)]
    record_path = slices.folder / "slices" / "slice-00002-of-00003.json"
    record = json.loads(record_path.read_text())
    record["key"]["backbone"]["seed"] = 1  # a slice of another backbone: stale
    record_path.write_text(json.dumps(record))
    calls = []
    real = store_module.FeatureStore.extract

    def counted(self, split, adapter, pooling, source=None):
        calls.append(None if source is None else len(source))
        return real(self, split, adapter, pooling, source)

    monkeypatch.setattr(store_module.FeatureStore, "extract", counted)
    (row,) = extract_sharded(BACKBONE, "shapes", settings, 3)
    assert calls == [24, 2] and row["extracted"] == 2 and row["samples"] == 50 and row["slices"] == 3
    assert not (slices.folder / "slices").exists()  # joined, slices removed
    joined = store.features("train", "cls")
    assert store.used["train/cls"] == str(slices.folder)
    alone = FeatureStore(BACKBONE, load_eval_config("shapes", [*settings, "run.cache=false"])).features("train", "cls")
    for name in ("feats", "labels", "targets", "masks"):
        torch.testing.assert_close(getattr(joined, name), getattr(alone, name), rtol=0, atol=0, equal_nan=True)
    assert isinstance(np.load(slices.folder / "feats.npy", mmap_mode="r"), np.memmap)
    assert extract_sharded(BACKBONE, "shapes", settings, 3)[0]["extracted"] == 0 and calls == [24, 2, None]
    other_key = {**slices.key, "pooling": "mean"}
    assert load_joined(slices.folder, other_key) is None
    with pytest.raises(ValueError, match="run.cache must stay true"):
        extract_sharded(BACKBONE, "shapes", [*settings, "run.cache=false"], 2)
