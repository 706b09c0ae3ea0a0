"""VideoMAE: tubelet targets in the video ViT's token order, the decoder's positions, config checks and a
tiny end-to-end run on synthetic echo clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightly.models import utils

from ssl_distill.backbones import load_backbone
from ssl_distill.backbones.video_vit import VideoViT, sincos_3d
from ssl_distill.config import ConfigError
from ssl_distill.data.echo import write_synthetic_echo
from ssl_distill.engine import train
from ssl_distill.modules.decoder import DecoderConfig, PixelDecoder
from ssl_distill.modules.tubelets import normalize_tubelets, tubelet_pixels
from ssl_distill.registry import OBJECTIVES

from conftest import tiny_config


@pytest.fixture(scope="module")
def echo(tmp_path_factory) -> Path:
    return write_synthetic_echo(tmp_path_factory.mktemp("echo"), 8, seed=3, size=32, frames=24)


def echo_config(tmp_path: Path, echo: Path, *overrides: str):
    data = [f"data.root={echo}", "data.split=all", "data.batch_size=4"]
    return tiny_config("videomae/tiny_echo.yaml", tmp_path, *data, *overrides)


def test_tubelet_targets_follow_the_video_vit_token_order():
    model = VideoViT(img_size=16, num_frames=4, patch_size=4, tubelet_size=2, embed_dim=96, depth=1, num_heads=2)
    with torch.no_grad():  # an identity tubelet embedding: channel k reads element k of the (t, p, p, C) target
        model.patch_embed.weight.copy_(torch.eye(96).view(96, 2, 4, 4, 3).permute(0, 4, 1, 2, 3))
        model.patch_embed.bias.zero_()
        video = torch.randn(2, 3, 4, 16, 16)
        tokens = model.patch_embed(video).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tubelet_pixels(video, 2, 4), tokens)
    torch.testing.assert_close(model.pixel_targets(video), tokens)
    assert model.pixels_per_token == 96


def test_norm_pix_standardises_each_channel_of_a_tubelet():
    video = torch.rand(2, 3, 4, 8, 8) * torch.tensor([1.0, 5.0, 0.1]).view(1, 3, 1, 1, 1) + 2
    target = normalize_tubelets(tubelet_pixels(video, 2, 4), 3).unflatten(-1, (32, 3))  # (B, L, t * p * p, C)
    torch.testing.assert_close(target.mean(dim=2), torch.zeros(2, 8, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(target.std(dim=2), torch.ones(2, 8, 3), atol=1e-4, rtol=0)


def test_a_constant_tubelet_gets_a_zero_target_and_others_the_official_one():
    video = torch.rand(2, 3, 4, 16, 16) * 4 - 2
    video[0, :, :2, :8, :8] = torch.tensor([-2.1179039, -2.0357142, -1.8044444]).view(3, 1, 1, 1)  # black
    pixels = tubelet_pixels(video, 2, 8)  # 128 pixels per channel of a tubelet
    target = normalize_tubelets(pixels, 3)
    assert torch.equal(target[0, 0], torch.zeros(384))  # the official formula gives up to 0.48 here
    x = pixels.unflatten(-1, (-1, 3))  # the official `normlize_target` on the other tubelets
    official = ((x - x.mean(dim=-2, keepdim=True)) / (x.var(dim=-2, keepdim=True).sqrt() + 1e-6)).flatten(-2)
    assert official[0, 0].abs().max() > 0.1
    torch.testing.assert_close(target[:, 1:], official[:, 1:], atol=1e-5, rtol=0)
    torch.testing.assert_close(target[1], official[1], atol=1e-5, rtol=0)


def test_decoder_positions_for_image_and_video_grids():
    small = DecoderConfig(dim=32, depth=1, heads=2)
    video = PixelDecoder((2, 4, 4), in_dim=24, out_dim=96, cfg=small)
    assert torch.equal(video.decoder.pos_embed[0, 1:], sincos_3d(32, (2, 4, 4)))
    assert torch.equal(video.decoder.pos_embed[0, 0], torch.zeros(32))
    idx_keep = torch.tensor([[0, 3, 17], [0, 1, 32]])
    assert video(torch.randn(2, 3, 24), idx_keep).shape == (2, 32, 96)
    image = PixelDecoder((4, 4), in_dim=24, out_dim=48, cfg=small)
    expected = utils.get_2d_sine_cosine_positional_embedding(32, 4, num_prefix_tokens=1)
    assert torch.equal(image.decoder.pos_embed[0], torch.from_numpy(expected).float())
    with pytest.raises(ValueError, match="grid_size"):
        PixelDecoder((4, 2), in_dim=24, out_dim=48, cfg=small)
    no_prefix = PixelDecoder((2, 4, 4), in_dim=24, out_dim=96, cfg=small, num_prefix_tokens=0)
    assert no_prefix.decoder.pos_embed.shape == (1, 32, 32)
    assert no_prefix(torch.randn(2, 2, 24), idx_keep).shape == (2, 32, 96)  # patch tokens only


def test_clip_length_and_model_sizes_are_checked(tmp_path, echo):
    videomae = OBJECTIVES.get("videomae")
    with pytest.raises(ConfigError, match="model.num_frames=4 differs from data.options.num_frames=8"):
        echo_config(tmp_path, echo, "model.num_frames=4")
    with pytest.raises(ConfigError, match="bad value for 'model.num_heads'"):
        echo_config(tmp_path, echo, "model.num_heads=null")
    with pytest.raises(ConfigError, match="works with model.kind \\['video_vit'\\], not 'vit'"):
        echo_config(tmp_path, echo, "model.kind=vit")
    with pytest.raises(ConfigError, match="is now 'model.kind: video_vit'"):
        tiny_config("mae/tiny_mnist.yaml", tmp_path, "model.name=video_vit")
    assert videomae.requires == {"video"}
    assert videomae(echo_config(tmp_path, echo), 1).backbone.spec["num_frames"] == 8


def test_tiny_videomae_run_learns_and_exports_the_video_vit(tmp_path, echo):
    result = train(echo_config(tmp_path, echo, "train.max_steps=24", "optim.lr=2e-3"))
    losses = result.losses
    assert len(losses) == 24 and all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < 0.9 * np.mean(losses[:4]), losses
    exported = load_backbone(result.exported).eval()
    assert isinstance(exported, VideoViT) and exported.grid_size == (4, 4, 4)
    trained = load_backbone(result.checkpoint).eval()
    clip = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        assert torch.equal(exported(clip), trained(clip))
