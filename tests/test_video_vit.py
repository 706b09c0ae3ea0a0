"""VideoViT (tubelets + timm blocks) and tube masking."""

from __future__ import annotations

import pytest
import torch

from ssl_distill.backbones import BACKBONES, build_backbone, export_backbone, load_backbone, mask_from_keep
from ssl_distill.backbones.video_vit import VideoViT
from ssl_distill.modules.masking import tube_mask

TINY = dict(
    img_size=32, num_frames=4, patch_size=8, tubelet_size=2, embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.0
)


@pytest.fixture
def model() -> VideoViT:
    torch.manual_seed(0)
    return VideoViT(**TINY).eval()


@pytest.fixture
def video() -> torch.Tensor:
    return torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))


def test_shapes_and_properties(model, video):
    assert BACKBONES.get("video_vit") is VideoViT
    assert model.grid_size == (2, 4, 4) and model.num_patches == 32
    assert (model.embed_dim, model.depth, model.num_prefix_tokens) == (32, 3, 1)
    cls, patches = model.features(video)
    assert cls.shape == (2, 32) and patches.shape == (2, 32, 32)
    assert torch.equal(model(video), cls)
    assert model.forward_features(video).shape == (2, 33, 32)
    assert model.no_weight_decay() <= {name for name, _ in model.named_parameters()}
    with pytest.raises(ValueError, match="expects"):
        model(torch.randn(1, 3, 6, 32, 32))


def test_positions_are_fixed_distinct_and_not_saved(model):
    positions = model.pos_embed[0]
    assert torch.equal(positions[0], torch.zeros(32))
    assert torch.cdist(positions[1:], positions[1:]).add(torch.eye(32)).min() > 1e-3
    assert "pos_embed" not in model.state_dict()
    assert not positions.requires_grad


def test_spec_rebuilds_the_model(model):
    spec = model.spec
    defaults = {"drop_path_rate": 0.0, "in_chans": 3, "qkv_bias": True, "norm_eps": 1e-6, "pos_embed": "sincos_3d"}
    assert spec == {"kind": "video_vit", **TINY, **defaults}
    assert build_backbone(spec).spec == spec


def test_export_and_load_round_trip(model, video, tmp_path):
    path = export_backbone(model, tmp_path / "video_vit.safetensors")
    loaded = load_backbone(path).eval()
    assert isinstance(loaded, VideoViT) and loaded.spec == model.spec
    assert torch.equal(loaded.forward_features(video), model.forward_features(video))
    fresh = VideoViT(**TINY)
    assert not torch.equal(fresh.forward_features(video), model.forward_features(video))


def test_truncated_run_equals_the_tap_of_a_full_run(model, video):
    idx_keep = tube_mask(2, model.grid_size, 0.5, generator=torch.Generator().manual_seed(0))
    full = model.encode(video, idx_keep=idx_keep, taps=(0, 1, 2))
    for stop in (1, 2):
        partial = model.encode(video, idx_keep=idx_keep, taps=(stop - 1,), stop=stop)
        assert torch.equal(partial.tokens, full.taps[stop - 1])
    assert not torch.equal(full.tokens, full.taps[2])  # a full run ends with the final norm
    with pytest.raises(ValueError, match="taps"):
        model.encode(video, taps=(2,), stop=2)


def test_kept_tokens_are_the_gathered_full_tokens(model, video):
    idx_keep = tube_mask(2, model.grid_size, 0.75, generator=torch.Generator().manual_seed(3))
    kept = model.embed(video, idx_keep)
    everything = model.embed(video)
    assert kept.shape == (2, 1 + 2 * 4, 32)
    assert torch.equal(kept, torch.stack([everything[b, idx_keep[b]] for b in range(2)]))


def test_tube_mask_hides_the_same_positions_in_every_time_slice():
    grid, ratio = (4, 3, 5), 0.75
    idx_keep = tube_mask(6, grid, ratio, generator=torch.Generator().manual_seed(0))
    keep = 15 - int(ratio * 15)
    assert idx_keep.shape == (6, 1 + 4 * keep) and idx_keep.dtype == torch.long
    assert (idx_keep[:, 0] == 0).all()
    patches = idx_keep[:, 1:] - 1
    slices, spatial = patches // 15, patches % 15
    for b in range(6):
        per_slice = [set(spatial[b][slices[b] == t].tolist()) for t in range(4)]
        assert all(len(s) == keep for s in per_slice) and all(s == per_slice[0] for s in per_slice)
    assert len({tuple(row.tolist()) for row in spatial[:, :keep]}) > 1  # samples differ
    hidden = mask_from_keep(idx_keep, 60)
    assert (hidden.sum(1) == 4 * int(ratio * 15)).all()
    again = tube_mask(6, grid, ratio, generator=torch.Generator().manual_seed(0))
    assert torch.equal(idx_keep, again)


def test_tube_mask_discovr_counts():
    idx_keep = tube_mask(2, (32, 7, 7), 0.9)
    assert idx_keep.shape == (2, 1 + 160)  # 5 of 49 positions visible in each of 32 slices
    with pytest.raises(ValueError):
        tube_mask(2, (2, 2, 2), 1.0)


def test_gradients_reach_the_tubelet_embedding(video):
    model = VideoViT(**TINY, drop_path_rate=0.1).train()
    idx_keep = tube_mask(2, model.grid_size, 0.5)
    model.encode(video, idx_keep=idx_keep).tokens.mean().backward()
    assert model.patch_embed.weight.grad.abs().sum() > 0 and model.cls_token.grad.abs().sum() > 0
