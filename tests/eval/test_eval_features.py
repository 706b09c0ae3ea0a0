import torch

import eval.store as store_module
from eval.config import load_eval_config
from eval.store import FeatureStore
from ssl_distill.backbones import export_backbone, load_backbone

TINY = ["model.img_size=32", "model.patch_size=8", "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.weights=none"]


def _settings(tmp_path, *extra):
    return load_eval_config(
        "shapes",
        [
            *TINY,
            "data.limit=12",
            "data.batch_size=5",
            "run.progress=false",
            f"run.cache_dir={tmp_path / 'cache'}",
            *extra,
        ],
    )


def _counting(monkeypatch):
    calls = []
    real = store_module.extract_features

    def counted(*args, **kwargs):
        calls.append(kwargs.get("pooling"))
        return real(*args, **kwargs)

    monkeypatch.setattr(store_module, "extract_features", counted)
    return calls


def test_extraction_shapes_and_pooling(tmp_path):
    store = FeatureStore("vit_tiny_patch16_224", _settings(tmp_path, "run.cache=false"))
    cls = store.features("train", "cls")
    patch = store.features("train", "patch")
    both = store.features("val", "cls_mean")
    assert cls.feats.shape == (12, 32) and cls.labels.shape == (12,) and cls.grid == (4, 4)
    assert patch.feats.shape == (12, 16, 32) and patch.feats.dtype == torch.float16
    assert both.feats.shape == (12, 64)
    assert cls.masks.shape == (12, 32, 32) and int(cls.masks.max()) <= 5
    assert torch.isnan(cls.targets).all() and cls.classes[0] == "disk"


def test_cache_hit_returns_identical_features(tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    first = FeatureStore("vit_tiny_patch16_224", _settings(tmp_path)).features("train", "cls")
    again = FeatureStore("vit_tiny_patch16_224", _settings(tmp_path)).features("train", "cls")
    assert calls == ["cls"]
    assert torch.equal(first.feats, again.feats) and torch.equal(first.labels, again.labels)
    assert (
        torch.equal(first.masks, again.masks) and first.grid == again.grid and first.classes == again.classes
    )
    # any changed input is a miss: pooling, split size, init seed
    FeatureStore("vit_tiny_patch16_224", _settings(tmp_path)).features("train", "mean")
    FeatureStore("vit_tiny_patch16_224", _settings(tmp_path, "data.limit=10")).features("train", "cls")
    reseeded = FeatureStore("vit_tiny_patch16_224", _settings(tmp_path, "model.seed=1")).features(
        "train", "cls"
    )
    assert calls == ["cls", "mean", "cls", "cls"]
    assert not torch.allclose(reseeded.feats, first.feats)


def test_rewritten_backbone_file_invalidates_the_cache(tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    sizes = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    path = tmp_path / "backbone.safetensors"
    export_backbone(load_backbone("vit_tiny_patch16_224", **sizes), path)
    before = FeatureStore(path, _settings(tmp_path, "model.weights=null")).features("val", "cls")
    assert torch.equal(FeatureStore(path, _settings(tmp_path, "model.weights=null")).features("val", "cls").feats, before.feats)
    export_backbone(load_backbone("vit_tiny_patch16_224", **sizes), path)  # new random weights, same path
    after = FeatureStore(path, _settings(tmp_path, "model.weights=null")).features("val", "cls")
    assert len(calls) == 2
    assert not torch.allclose(after.feats, before.feats)
