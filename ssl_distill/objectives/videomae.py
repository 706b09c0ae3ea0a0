"""VideoMAE (Tong et al., NeurIPS 2022, §3.3: cube embedding, tube masking at a 90% ratio): reconstruct
the pixels of hidden tubelets from the visible tokens (official `modeling_pretrain.py`,
`engine_for_pretraining.py`).

The video ViT's sizes come from the `model` section (img_size, patch_size, embed_dim, depth,
num_heads, mlp_ratio, drop_path_rate; `model.name` is a timm name and is not used) and its clip from
`objective.video`. Targets are tubelet pixels standardised per channel (VideoMAE's default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from ssl_distill.backbones import mask_from_keep
from ssl_distill.backbones.video_vit import VideoViT
from ssl_distill.config import ConfigError
from ssl_distill.losses import MaskedReconstructionLoss
from ssl_distill.modules.decoder import PixelDecoder
from ssl_distill.modules.masking import tube_mask
from ssl_distill.modules.tubelets import tubelet_targets
from ssl_distill.objectives.base import Objective, Output
from ssl_distill.registry import OBJECTIVES


@dataclass
class VideoConfig:
    num_frames: int | None = None  # None: data.options.num_frames, the clip length the dataset yields
    tubelet_size: int = 2


@dataclass
class VideoMAEConfig:
    name: str = "videomae"
    video: VideoConfig = field(default_factory=VideoConfig)
    mask_ratio: float = 0.9
    norm_pix_loss: bool = True
    decoder_dim: int = 384
    decoder_depth: int = 4
    decoder_heads: int = 6


def clip_frames(cfg: DictConfig) -> int:
    """Frames per clip: objective.video.num_frames, else data.options.num_frames; both must agree."""
    ours, data = cfg.objective.video.num_frames, cfg.data.options.get("num_frames")
    if ours is None and data is None:
        raise ConfigError("set data.options.num_frames (or objective.video.num_frames): the clip length")
    if ours is not None and data is not None and ours != data:
        raise ConfigError(f"objective.video.num_frames={ours} differs from data.options.num_frames={data}")
    return int(ours if ours is not None else data)


def build_video_vit(cfg: DictConfig, num_frames: int, tubelet_size: int, **extra: Any) -> VideoViT:
    """A VideoViT with the `model` section's sizes; `extra` overrides them (e.g. drop_path_rate)."""
    m = cfg.model
    missing = [key for key in ("embed_dim", "depth", "num_heads") if m[key] is None]
    if missing:
        raise ConfigError(f"model.{missing[0]} must be set for a video ViT (model.name is not used for video)")
    sizes = dict(
        img_size=m.img_size, num_frames=num_frames, patch_size=m.patch_size, tubelet_size=tubelet_size,
        embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio or 4.0,
        drop_path_rate=m.drop_path_rate,
    )
    return VideoViT(**{**sizes, **extra})


@OBJECTIVES.register("videomae")
class VideoMAE(Objective):
    """batch['video']: (B, C, T, H, W) -> pixel loss on the hidden tubelets."""

    Config = VideoMAEConfig
    requires = frozenset({"video"})

    def __init__(self, cfg: DictConfig, max_steps: int) -> None:
        super().__init__(cfg, max_steps)
        o = cfg.objective
        self.backbone = build_video_vit(cfg, clip_frames(cfg), o.video.tubelet_size)
        b = self.backbone
        self.decoder = PixelDecoder(
            b.grid_size, b.embed_dim, b.tubelet_size * b.patch_size**2 * b.config["in_chans"],
            o.decoder_dim, o.decoder_depth, o.decoder_heads,
        )
        self.reconstruction = MaskedReconstructionLoss()  # targets are normalised by tubelet_targets
        self.mask_ratio, self.norm_pix = o.mask_ratio, o.norm_pix_loss

    def forward(self, batch: dict[str, Any], step: int) -> Output:
        video = batch["video"]
        b = self.backbone
        idx_keep = tube_mask(len(video), b.grid_size, self.mask_ratio, device=video.device)
        pred = self.decoder(b.encode(video, idx_keep).tokens, idx_keep)
        target = tubelet_targets(video, b.tubelet_size, b.patch_size, norm_pix=self.norm_pix)
        loss = self.reconstruction(pred, target, mask_from_keep(idx_keep, b.num_patches))
        return Output(loss, {"reconstruction": loss.detach()})
