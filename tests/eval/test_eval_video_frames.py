"""Echo frames as an image source, and backbones meeting inputs of the other kind: a video ViT on
frames (static clips, tokens averaged over time) and an image ViT on clips (frame by frame)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from decord import VideoReader

from eval.api import run_protocol
from eval.config import load_eval_config
from eval.extract import FrameAverage, StaticClip
from eval.store import FeatureStore
from ssl_distill.backbones import load_backbone
from ssl_distill.backbones.video_vit import VideoViT
from ssl_distill.data.echo import write_synthetic_echo
from ssl_distill.data.echo_frames import frame_indices
from ssl_distill.data.video import video_entries
from ssl_distill.registry import DATASETS

VIDEO = dict(img_size=32, num_frames=4, patch_size=8, tubelet_size=2, embed_dim=32, depth=1, num_heads=2)


@pytest.fixture(scope="module")
def echo(tmp_path_factory) -> Path:
    return write_synthetic_echo(tmp_path_factory.mktemp("echo"), 8, seed=3, size=32, frames=24)


def _video_vit(seed: int = 0) -> VideoViT:
    torch.manual_seed(seed)
    return VideoViT(**VIDEO).eval()


def test_echo_frames_are_evenly_spaced_frames_with_their_lv_masks(echo):
    frames = DATASETS.get("echo_frames")(root=str(echo), split="train", frames_per_video=3)
    entries = video_entries(echo, "train")
    assert len(frames) == 3 * len(entries) == 12 and frames.has_masks
    assert frame_indices(24, 3).tolist() == [4, 12, 20]
    sample = frames[4]  # video 1, frame 12
    expected = VideoReader(str(entries[1].path)).get_batch([12]).asnumpy()[0]
    assert sample.image.mode == "RGB" and np.array_equal(np.asarray(sample.image), expected)
    assert np.array_equal(sample.mask, np.load(entries[1].masks)[12]) and set(np.unique(sample.mask)) == {0, 1}
    assert sample.label == entries[1].label
    again = DATASETS.get("echo_frames")(root=str(echo), split="train", frames_per_video=3)[4]
    assert np.array_equal(np.asarray(again.image), expected)
    sizes = {split: len(DATASETS.get("echo_frames")(root=str(echo), split=split)) for split in ("val", "test")}
    assert sizes == {"val": 16, "test": 16}  # two videos each, 8 frames by default
    limited = DATASETS.get("echo_frames")(root=str(echo), split="train", limit=4, frames_per_video=3)
    assert len(limited) == 4 and len(limited.entries) == 2


def test_default_is_the_synthetic_set_of_echo_video(monkeypatch, tmp_path):
    monkeypatch.setenv("SSL_DISTILL_CACHE", str(tmp_path))
    frames = DATASETS.get("echo_frames")(split="test", synthetic_videos=4, synthetic_seed=5, frames_per_video=2)
    root = tmp_path / "synth_echo_adult_4_5_v2"
    stamp = (root / "FileList.csv").stat().st_mtime_ns
    clips = DATASETS.get("echo_video")(split="test", synthetic_videos=4, synthetic_seed=5, img_size=32, num_frames=4)
    assert [e.path for e in frames.entries] == [e.path for e in clips.entries] and len(frames) == 4
    assert (root / "FileList.csv").stat().st_mtime_ns == stamp


def test_static_clip_averages_each_spatial_position_over_time():
    video, images = _video_vit(), torch.randn(2, 3, 32, 32)
    clip = images.unsqueeze(2).expand(-1, -1, 4, -1, -1)
    with torch.no_grad():
        cls, tokens = StaticClip(video).features(images)
        assert cls.shape == (2, 32) and tokens.shape == (2, 16, 32)
        per_time = video.features(clip)[1].unflatten(1, (2, 16))  # (B, T', H' * W', D), t-major
        assert not torch.allclose(per_time[:, 0], per_time[:, 1], atol=1e-3)  # time positions tell them apart
        torch.testing.assert_close(tokens, per_time.mean(1))
        # without the time part of the positions, a static clip is the same at every time step
        time_channels = VIDEO["embed_dim"] - 4 * (3 * VIDEO["embed_dim"] // 16)
        video.pos_embed[..., :time_channels] = 0.0
        _, flat = StaticClip(video).features(images)
        torch.testing.assert_close(flat, video.features(clip)[1][:, :16], atol=1e-5, rtol=1e-5)


def test_frame_average_encodes_each_frame_alone():
    torch.manual_seed(0)
    image = load_backbone("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2).eval()
    frames = torch.randn(3, 3, 32, 32)  # three frames of one clip
    with torch.no_grad():
        cls, tokens = FrameAverage(image).features(frames.transpose(0, 1).unsqueeze(0))  # (1, C, T, H, W)
        by_frame_cls, by_frame_tokens = image.features(frames)
    torch.testing.assert_close(cls[0], by_frame_cls.mean(0))
    torch.testing.assert_close(tokens[0], by_frame_tokens.mean(0))


def _frames_settings(echo: Path, *extra: str):
    return [
        f"data.root={echo}",
        "data.options.frames_per_video=2",
        "data.batch_size=5",
        "run.cache=false",
        "run.progress=false",
        *extra,
    ]


def test_video_backbone_features_and_segmentation_on_echo_frames(echo):
    video = _video_vit()
    store = FeatureStore(video, load_eval_config("echo_frames", _frames_settings(echo)))
    patch = store.features("train", "patch")
    assert patch.feats.shape == (8, 16, 32) and patch.grid == (4, 4)
    assert patch.masks.shape == (8, 32, 32) and set(patch.masks.unique().tolist()) == {0, 1}
    assert store.features("val", "cls").feats.shape == (4, 32)
    overrides = _frames_settings(echo, "segment.epochs=2", "segment.batch_size=4", "segment.overlays=0")
    result, _ = run_protocol("segment", video, "echo_frames", overrides, write=False)
    assert result.details["grid"] == [4, 4] and math.isfinite(result.details["dice"][1])


def test_segment_refuses_clips(echo):
    clips = [f"data.root={echo}", "data.options.num_frames=4", "data.options.img_size=32"]
    overrides = [*clips, "data.options.with_masks=true", "run.cache=false", "run.progress=false"]
    with pytest.raises(ValueError, match="echo_frames"):
        run_protocol("segment", _video_vit(), "echo_video", overrides, write=False)
