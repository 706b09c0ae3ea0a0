"""Generated sets for the patch-level methods (shapes_fine, shapes_scenes), nearest-neighbour partners and
the Swin backbone kind (export, reload, evaluation features)."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from torch.utils.data import DataLoader

from eval.api import run_protocol
from eval.extract import ImageAdapter, extract_features
from eval.pairs import label_agreement, nearest_neighbors
from ssl_distill.backbones import build_backbone, export_backbone, load_backbone
from ssl_distill.config import ConfigError
from ssl_distill.data import ViewDataset, build_source, build_transform
from ssl_distill.data.neighbors import NeighborSource, read_neighbors, write_neighbors
from ssl_distill.data.shape_sets import FINE_CLASSES, make_fine_shapes, make_scenes
from ssl_distill.data.transforms import MultiCropConfig

SWIN = {"kind": "swin", "name": "swin_tiny_patch4_window7_224", "img_size": 32, "patch_size": 2, "embed_dim": 16,
        "depths": [2, 2], "num_heads": [2, 4], "window_size": 4}


def test_fine_shapes_are_seeded_balanced_and_their_classes_live_in_the_marks():
    images, labels, masks = make_fine_shapes(80, seed=3)
    again, _, _ = make_fine_shapes(80, seed=3)
    assert np.array_equal(images, again) and not np.array_equal(images, make_fine_shapes(80, seed=4)[0])
    assert np.bincount(labels).tolist() == [10] * 8
    assert set(np.unique(masks)) == {0, 1, 2}
    mark_fraction = (masks == 2).mean(axis=(1, 2))
    assert 0.005 < mark_fraction.mean() < 0.1  # a few small patches
    # two images of different classes differ in their marks; the class is the (head, tail) glyph pair
    assert FINE_CLASSES[0] == "disk+dot" and FINE_CLASSES[7] == "bar+stripe"


def test_scenes_hold_several_objects_and_the_label_is_the_largest_visible_one():
    images, labels, masks = make_scenes(50, seed=0)
    for mask, label in zip(masks, labels):
        present = [c for c in np.unique(mask) if c]
        assert 1 <= len(present) <= 4
        assert label == np.bincount(mask.ravel(), minlength=6)[1:].argmax()
    assert (np.array([len(np.unique(m)) - 1 for m in masks]) >= 2).mean() > 0.7


def test_registered_sets_have_fixed_splits_limits_that_keep_images_and_checked_options():
    train, val, test = (build_source("shapes_fine", split=s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (3000, 600, 900)
    assert not np.array_equal(np.asarray(train[0].image), np.asarray(val[0].image))
    limited = build_source("shapes_fine", split="train", limit=10)
    assert len(limited) == 10 and np.array_equal(np.asarray(limited[9].image), np.asarray(train[9].image))
    scenes = build_source("shapes_scenes", split="val", size=48)
    assert scenes[0].image.size == (48, 48) and scenes[0].mask.shape == (48, 48) and scenes.has_masks
    with pytest.raises(ConfigError, match="unknown key 'data.options.classes'"):
        build_source("shapes_fine", classes=4)
    with pytest.raises(ValueError, match="must be one of"):
        build_source("shapes_scenes", split="holdout")


def test_neighbour_files_round_trip_and_mismatches_are_errors(tmp_path):
    nns = np.array([[0, 2, 1], [1, 0, 2], [2, 1, 0]])
    path = write_neighbors(tmp_path / "nns_x.npz", nns)
    assert np.array_equal(read_neighbors(path, 3), nns)
    with np.load(path) as data:
        assert list(data.keys()) == ["nns"] and data["nns"].dtype == np.int64
    with pytest.raises(ValueError, match="made for 3 images, the dataset has 4"):
        read_neighbors(path, 4)
    with pytest.raises(FileNotFoundError, match="ssl-eval knn-pairs"):
        read_neighbors(tmp_path / "missing.npz")


def test_nearest_neighbours_put_the_image_first_then_the_most_similar(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(40, 6)).astype(np.float32)
    feats[7] = feats[3]  # an exact duplicate must not push the image out of column 0
    nns = nearest_neighbors(feats, top=5)
    assert np.array_equal(nns[:, 0], np.arange(40)) and nns[3, 1] == 7 and nns[7, 1] == 3
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    for i in (0, 11, 25):
        assert set(nns[i, 1:]) == set(np.argsort(-sims[i])[:4])
    assert label_agreement(np.array([[0, 1, 2], [1, 0, 2], [2, 0, 1]]), np.array([0, 0, 1]), [1, 2]) == {1: 2 / 3, 2: 1 / 3}


def test_view_dataset_adds_seeded_partner_views_from_the_neighbours(tmp_path):
    source = build_source("shapes_scenes", split="train", limit=20)
    nns = nearest_neighbors(np.stack([np.asarray(source[i].image, dtype=np.float32).ravel() for i in range(20)]), top=6)
    wrapped = build_source("neighbors", split="train", limit=20, dataset="shapes_scenes", file=str(write_neighbors(tmp_path / "n.npz", nns)), num_neighbors=3)
    assert isinstance(wrapped, NeighborSource) and wrapped.has_masks and wrapped.classes == source.classes
    transform = build_transform(MultiCropConfig(global_crop_size=32, local_crop_size=16, n_local_views=2))
    dataset = ViewDataset(wrapped, transform)
    assert {"partner_views", "partner_index"} <= dataset.provides
    partners = {dataset[(5, seed)]["partner_index"] for seed in range(40)}
    assert partners == set(nns[5, 1:4].tolist())
    first, again = dataset[(5, 11)], dataset[(5, 11)]
    assert first["partner_index"] == again["partner_index"]
    assert all(torch.equal(a, b) for a, b in zip(first["partner_views"], again["partner_views"]))
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert len(batch["partner_views"]) == 4 and batch["partner_views"][0].shape == (4, 3, 32, 32)
    with pytest.raises(ValueError, match="num_neighbors must lie in \\[1, 5\\]"):
        build_source("neighbors", limit=20, dataset="shapes_scenes", file=str(tmp_path / "n.npz"), num_neighbors=6)


def test_swin_backbone_exports_into_timm_reloads_and_feeds_the_evaluation(tmp_path):
    torch.manual_seed(0)
    swin = build_backbone(SWIN).eval()
    assert swin.embed_dim == 32 and swin.grid_size == (8, 8) and swin.num_prefix_tokens == 0
    images = torch.randn(2, 3, 32, 32)
    pooled, tokens = swin.features(images)
    assert tokens.shape == (2, 64, 32)
    torch.testing.assert_close(pooled, tokens.mean(1))
    assert all(name.endswith("relative_position_bias_table") for name in swin.no_weight_decay())
    path = export_backbone(swin, tmp_path / "swin.safetensors")
    torch.testing.assert_close(load_backbone(path).eval()(images), swin(images))
    sizes = {k: tuple(v) if isinstance(v, list) else v for k, v in SWIN.items() if k not in ("kind", "name")}
    reference = timm.create_model(SWIN["name"], pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=str(path)), **sizes).eval()
    torch.testing.assert_close(reference(images), swin(images))
    source = build_source("shapes_scenes", split="val", limit=6)
    features = extract_features(swin, source, ImageAdapter(32, [0.5] * 3, [0.25] * 3), pooling="patch")
    assert features.feats.shape == (6, 64, 32) and features.grid == (8, 8)
    result, _ = run_protocol("knn", str(path), "shapes_fine", ["data.limit=40", "run.cache=false", "run.progress=false"], write=False)
    assert result.details["bank_size"] == 40 and 0 <= result.metrics["top1"] <= 1
