"""Bundled data, file sources and the resumable sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_distill.config import ConfigError
from ssl_distill.data import ResumableSampler, ViewDataset, build_source, eval_transform
from ssl_distill.data.bundled import SHAPE_CLASSES, load_mnist, make_shapes


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
