"""Exports timm loads in one line with the preprocessing ssl-eval used, and clip shapes taken from the
backbone (issue 10, items 9 and 15)."""

from __future__ import annotations

import pytest
import timm
import torch

from eval.api import run_protocol
from eval.config import load_eval_config
from eval.store import FeatureStore
from ssl_distill.backbones import export_backbone
from ssl_distill.backbones.video_vit import VideoViT
from ssl_distill.data import build_source
from ssl_distill.data.echo import write_synthetic_echo
from ssl_distill.engine import train

from conftest import tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 2-step MAE run trained with a non-ImageNet normalisation."""
    norm = ["data.transform.mean=[0.5,0.5,0.5]", "data.transform.std=[0.25,0.25,0.25]"]
    return train(
        tiny_config("mae/tiny_mnist.yaml", tmp_path_factory.mktemp("export"), "train.max_steps=2", *norm)
    ).run_dir


def test_timm_loads_the_export_folder_in_one_line_with_ssl_evals_preprocessing(run_dir):
    model = timm.create_model(f"local-dir:{run_dir / 'export'}", pretrained=True, num_classes=0).eval()
    data = timm.data.resolve_data_config({}, model=model)
    assert (
        data["input_size"] == (3, 32, 32)
        and list(data["mean"]) == [0.5] * 3
        and list(data["std"]) == [0.25] * 3
    )
    transform = timm.data.create_transform(**data)
    images = build_source("mnist", split="val", limit=16)  # 28 px digits: resized to 32 like ssl-eval does
    with torch.no_grad():
        timm_features = model(torch.stack([transform(images[i].image) for i in range(16)]))
    settings = ["data.limit=16", "data.batch_size=16", "run.cache=false", "run.progress=false"]
    for source in (run_dir / "export", run_dir / "backbone.safetensors", run_dir):
        ours = FeatureStore(source, load_eval_config("mnist", settings)).features("val", "cls")
        assert torch.equal(ours.feats, timm_features), source


def test_ssl_distill_export_writes_either_layout(run_dir, tmp_path):
    from ssl_distill.cli import main

    assert main(["export", str(run_dir), str(tmp_path / "folder")]) == 0
    assert {p.name for p in (tmp_path / "folder").iterdir()} == {"config.json", "model.safetensors"}
    assert main(["export", str(run_dir), str(tmp_path / "one.safetensors")]) == 0
    first = FeatureStore(tmp_path / "folder", load_eval_config("mnist", ["data.limit=8", "run.cache=false"]))
    second = FeatureStore(
        tmp_path / "one.safetensors", load_eval_config("mnist", ["data.limit=8", "run.cache=false"])
    )
    assert first.normalization == second.normalization == ([0.5] * 3, [0.25] * 3)
    assert torch.equal(first.features("val").feats, second.features("val").feats)


def test_video_eval_takes_the_clip_shape_from_the_backbone(tmp_path):
    echo = write_synthetic_echo(tmp_path / "echo", 6, seed=1, size=32, frames=16)
    torch.manual_seed(0)
    video = VideoViT(
        img_size=32, num_frames=4, patch_size=8, tubelet_size=2, embed_dim=32, depth=1, num_heads=2
    )
    path = export_backbone(video, tmp_path / "video.safetensors")
    settings = [
        f"data.root={echo}",
        "run.cache=false",
        "run.progress=false",
        "data.options.clip_sampling=uniform",
    ]
    result, _ = run_protocol(
        "features", path, "echo_video", settings, write=False
    )  # defaults: 16 frames, 112 px
    assert result.rows[0]["dim"] == 32
    store = FeatureStore(path, load_eval_config("echo_video", [*settings, "data.options.stride=1"]))
    assert store.data_options["num_frames"] == 4 and store.data_options["img_size"] == 32
    assert store.data_options["stride"] == 1  # given options win
    random = FeatureStore(
        path, load_eval_config("echo_video", [*settings, "model.weights=none", "model.seed=1"])
    )
    assert isinstance(random.backbone, VideoViT) and random.backbone.spec == video.spec
    assert not torch.allclose(random.features("val").feats, store.features("val").feats)
