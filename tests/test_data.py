"""Bundled data, file sources, the resumable sampler, per-sample seeding and the loader."""

from __future__ import annotations

import itertools
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_distill.config import ConfigError
from ssl_distill.data import ResumableSampler, ViewDataset, build_loader, build_source, eval_transform
from ssl_distill.data.bundled import SHAPE_CLASSES, load_mnist, make_shapes
from ssl_distill.data.loader import SeededDataset


def test_bundled_mnist_is_real_balanced_and_split():
    train_x, train_y = load_mnist("train")
    val_x, val_y = load_mnist("val")
    assert train_x.shape == (4000, 28, 28) and val_x.shape == (1000, 28, 28)
    assert np.bincount(train_y).tolist() == [400] * 10 and np.bincount(val_y).tolist() == [100] * 10
    # real digits: dark background, ink in the middle, and no image shared between the splits
    assert train_x[:, :3].mean() < 5 and train_x[:, 10:18, 10:18].mean() > 60
    assert not set(map(bytes, train_x[:200])) & set(map(bytes, val_x))


def test_shapes_masks_match_labels():
    images, labels, masks = make_shapes(50, seed=3)
    assert images.shape == (50, 32, 32, 3) and masks.shape == (50, 32, 32)
    for label, mask in zip(labels, masks):
        assert set(np.unique(mask)) == {0, label + 1}
        assert 20 < (mask > 0).sum() < 32 * 32 * 0.6
    again = make_shapes(50, seed=3)
    assert np.array_equal(again[0], images) and not np.array_equal(make_shapes(50, seed=4)[0], images)
    source = build_source("shapes", split="val", limit=10)
    assert source.has_masks and source.classes == SHAPE_CLASSES and len(source) == 10


def test_folder_and_csv_sources(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    folder = build_source("folder", root=str(tmp_path / "imgs"))
    assert folder.classes == ("cat", "dog") and len(folder) == 6 and folder[4].label == 1
    (tmp_path / "list.csv").write_text("path,label\nimgs/cat/0.png,cat\nimgs/dog/2.png,dog\n")
    listed = build_source("csv", root=str(tmp_path / "list.csv"))
    assert listed[1].label == 1 and listed[1].image.size == (8, 8)
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images"):
        build_source("folder", root=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="unknown key 'data.options.frames'"):
        build_source("mnist", frames=3)
    with pytest.raises(ConfigError, match="unknown key 'data.options.num_frame' \\(did you mean 'num_frames'\\?\\)"):
        build_source("echo_video", num_frame=3)


def test_sampler_is_seeded_resumable_and_splits_ranks():
    sampler = ResumableSampler(40, batch_size=4, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    assert len(full) == 40 and len({i for i, _ in full}) == 40
    sampler.set_epoch(2, start_batch=3)
    assert list(sampler) == full[12:]
    sampler.set_epoch(3)
    assert [i for i, _ in sampler] != [i for i, _ in full]
    ranks = [ResumableSampler(42, batch_size=4, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(0)
    parts = [list(r) for r in ranks]
    assert len(parts[0]) == len(parts[1]) == 20  # 42 -> 5 global batches of 8, the remainder dropped
    assert not {i for i, _ in parts[0]} & {i for i, _ in parts[1]}


def test_views_are_reproducible_per_sample_seed():
    from lightly.transforms import MAETransform

    dataset = ViewDataset(build_source("mnist", split="val", limit=4), MAETransform(input_size=32))
    first, again, other = dataset[(1, 123)], dataset[(1, 123)], dataset[(1, 124)]
    assert torch.equal(first["views"][0], again["views"][0])
    assert not torch.equal(first["views"][0], other["views"][0])
    state = torch.get_rng_state()
    dataset[(2, 5)]
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is untouched
    assert eval_transform(32)(build_source("mnist", split="val")[0].image).shape == (3, 32, 32)


def test_an_endless_sampler_runs_on_through_the_following_epochs():
    sampler = ResumableSampler(40, batch_size=4, seed=1)
    epochs = []
    for epoch in (2, 3, 4):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
    endless = ResumableSampler(40, batch_size=4, seed=1, endless=True)
    endless.set_epoch(2, start_batch=3)
    assert list(itertools.islice(endless, 28 + 80)) == epochs[0][12:] + epochs[1] + epochs[2]
    with pytest.raises(TypeError, match="no length"):
        len(endless)


class RandomDraws(SeededDataset):
    """Items drawn from torch's, numpy's and python's global RNGs, with the worker's pid."""

    def __len__(self) -> int:
        return 12

    def _item(self, index: int) -> dict:
        draws = torch.tensor([torch.rand(()).item(), np.random.random(), random.random()], dtype=torch.float64)
        return {"index": index, "draws": draws, "pid": os.getpid()}


def test_a_batch_fetch_seeds_each_item_and_restores_the_callers_rngs_once():
    dataset = RandomDraws()
    keys = [(3, 7), (5, 7), (3, 8), 4]
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    batch = dataset.__getitems__(keys)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]
    for key, item in zip(keys, batch):
        assert torch.equal(item["draws"], dataset[key]["draws"])  # the same as one at a time
    assert torch.equal(batch[0]["draws"], batch[1]["draws"])  # the seed alone decides the draws
    assert not torch.equal(batch[0]["draws"], batch[2]["draws"])
    assert torch.equal(batch[3]["draws"], dataset[(4, 4)]["draws"])
    torch.manual_seed(8)
    assert batch[2]["draws"][0] == torch.rand(()).item()  # torch's CPU stream, as torch.manual_seed gives it


def test_one_loader_keeps_its_workers_across_epochs_and_gives_the_per_epoch_batches():
    dataset = RandomDraws()
    sampler = ResumableSampler(len(dataset), batch_size=3, seed=0, endless=True)
    sampler.set_epoch(0, start_batch=1)
    batches = list(itertools.islice(build_loader(dataset, sampler, num_workers=2), 3 + 4 + 4))
    assert len({int(pid) for batch in batches for pid in batch["pid"]}) == 2  # no worker restarted
    single = ResumableSampler(len(dataset), batch_size=3, seed=0)
    expected = []
    for epoch, start in ((0, 1), (1, 0), (2, 0)):
        single.set_epoch(epoch, start)
        expected += list(build_loader(dataset, single))  # in this process
    assert len(batches) == len(expected) == 11
    for batch, reference in zip(batches, expected):
        assert torch.equal(batch["index"], reference["index"]) and torch.equal(batch["draws"], reference["draws"])
