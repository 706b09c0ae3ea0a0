"""Multi-view and image-text datasets: aligned views, errors naming the item, captions and tokens per item."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import grey_dilation
from torch.utils.data import default_collate

from ssl_distill.backbones.tokenizer import Tokenizer, tokenizer_from_options
from ssl_distill.data import ViewDataset, build_source, build_transform
from ssl_distill.data.image_text import synthetic_caption
from ssl_distill.data.multiview import edge_map


def test_edge_map_is_the_outer_morphological_edge():
    digit = np.zeros((1, 7, 7), dtype=np.uint8)
    digit[0, 3, 3] = 200
    edge = edge_map(digit)
    assert edge[0, 3, 3] == 0 and edge[0, 2, 2] == 200 and edge[0, 0, 0] == 0 and edge.sum() == 8 * 200
    rng = np.random.default_rng(0).integers(0, 256, (2, 9, 9)).astype(np.uint8)
    assert np.array_equal(edge_map(rng), grey_dilation(rng, size=(1, 3, 3)) - rng)


def test_edge_digits_items_are_aligned_named_views_and_collate_per_view():
    source = build_source("edge_digits", split="val", limit=6, views=["edge", "digit"])
    item = source[0]
    assert item["view_names"] == ["edge", "digit"] and [tuple(v.shape) for v in item["views"]] == [(1, 32, 32)] * 2
    digit = (item["views"][1][0].numpy() * 255).round().astype(np.uint8)
    assert np.abs(edge_map(digit[None])[0].astype(int) - (item["views"][0][0].numpy() * 255).round()).max() <= 1
    batch = default_collate([source[i] for i in range(4)])
    assert [tuple(v.shape) for v in batch["views"]] == [(4, 1, 32, 32)] * 2
    assert [names[0] for names in batch["view_names"]] == ["edge", "digit"]
    assert source.provides >= {"views", "view_names"}
    assert len(build_source("edge_digits", split="train")) + len(build_source("edge_digits", split="val")) == 1797


def _write_views(root, items, views=("rgb", "depth")):
    for view in views:
        for name in items:
            path = root / view / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((10, 12, 3), 50, dtype=np.uint8)).save(path.with_suffix(".png"))


def test_multiview_folder_matches_items_and_names_a_missing_view(tmp_path):
    _write_views(tmp_path, ["cat/a", "cat/b", "dog/c"])
    source = build_source("multiview_folder", str(tmp_path), per_view={"rgb": {"img_size": 8, "channels": 3}})
    assert source.view_names == ("depth", "rgb") and source.classes == ("cat", "dog")
    assert [tuple(v.shape) for v in source[2]["views"]] == [(1, 32, 32), (3, 8, 8)] and source[2]["label"] == 1
    (tmp_path / "depth" / "cat" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match="item 'cat/b': view 'depth' is missing"):
        build_source("multiview_folder", str(tmp_path))


def test_multiview_csv_names_the_item_with_an_empty_view(tmp_path):
    _write_views(tmp_path, ["x/a", "x/b"])
    rows = [{"id": "first", "rgb": "rgb/x/a.png", "depth": "depth/x/a.png", "label": "x"},
            {"id": "second", "rgb": "rgb/x/b.png", "depth": "", "label": "x"}]
    path = tmp_path / "views.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(ValueError, match="item 'second': no file for view"):
        build_source("multiview_csv", str(path))
    source = build_source("multiview_csv", str(path), limit=1)
    assert source.view_names == ("rgb", "depth") and len(source[0]["views"]) == 2


def test_shapes_text_captions_describe_the_scene_and_tokens_are_per_item():
    source = build_source("shapes_text", split="val", limit=200)
    captions = [source.captions(i) for i in range(200)]
    wrong = sum(source.classes[source.labels[i]] not in c["noisy"][0] for i, c in enumerate(captions))
    assert 15 <= wrong <= 70  # about 20% of the noisy captions name another class
    assert all(source.classes[source.labels[i]] in c["synthetic"][0] for i, c in enumerate(captions))
    dataset = ViewDataset(source, build_transform(_global_local()))
    assert dataset.provides >= {"text", "text_mask", "views"}
    item = dataset[(3, 11)]
    assert item["text"].shape == (2, 32) and item["text_mask"].dtype == torch.bool
    ids, mask = source.tokenizer.encode([captions[3]["noisy"][0], captions[3]["synthetic"][0]])
    assert torch.equal(item["text"], ids) and torch.equal(item["text_mask"], mask)
    assert len(item["views"]) == 7 and item["views"][0].shape == (3, 32, 32) and item["views"][1].shape == (3, 16, 16)


def _global_local():
    from omegaconf import OmegaConf

    from ssl_distill.data.image_text import GlobalLocalConfig

    return OmegaConf.structured(GlobalLocalConfig(local_size=16, n_local_views=6))


def test_synthetic_caption_reads_position_size_and_colour():
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[...] = (30, 60, 220)
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[2:8, 2:8] = 1
    image[2:8, 2:8] = (220, 30, 30)
    assert synthetic_caption(image, mask, "square") == "a small red square in the top left on a blue background"


def test_image_text_jsonl_with_alternatives_and_errors(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    rows = [{"image": "a.png", "label": "cat", "web": ["a cat", "kitty pic"], "synthetic": "a black square"}] * 3
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    source = build_source("image_text", str(path), captions=["web", "synthetic"])
    assert source.captions(0)["web"] == ["a cat", "kitty pic"] and source.classes == ("cat",)
    drawn = {tuple(source.extras(0)["text"][0].tolist()) for _ in range(20)}
    assert len(drawn) == 2  # one of the alternatives per draw
    with pytest.raises(ValueError, match="has no caption 'alt'"):
        build_source("image_text", str(path), captions=["alt"])
    path.write_text(json.dumps({**rows[0], "image": "missing.png"}))
    with pytest.raises(FileNotFoundError, match="item 'row 1': image not found"):
        build_source("image_text", str(path), captions=["web"])


def test_sentencepiece_model_file_tokenizer(tmp_path):
    import sentencepiece

    corpus = tmp_path / "corpus.txt"
    source = build_source("shapes_text", split="train", limit=300)
    corpus.write_text("\n".join(t for i in range(300) for texts in source.captions(i).values() for t in texts))
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=80,
                                            model_type="unigram", minloglevel=2)
    tokenizer = tokenizer_from_options("sentencepiece", str(tmp_path / "sp.model"), 12, True)
    assert tokenizer.vocab_size == 80
    rebuilt = Tokenizer(**tokenizer.spec)  # the spec carries the model: an exported tower needs no file
    ids, mask = rebuilt.encode(["A Small Red Disk", "disk"])
    assert torch.equal(ids, tokenizer.encode(["a small red disk", "disk"])[0]) and mask[0].sum() > mask[1].sum()
    with pytest.raises(FileNotFoundError, match="tokenizer_file"):
        tokenizer_from_options("sentencepiece", str(tmp_path / "absent.model"), 12, True)
