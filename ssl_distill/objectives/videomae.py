"""VideoMAE (Tong et al., NeurIPS 2022, §3.3: cube embedding, tube masking at a 90% ratio): reconstruct the
pixels of hidden tubelets from the visible tokens, after the official `modeling_pretrain.py` and
`engine_for_pretraining.py`. Targets are tubelet pixels standardised per channel (VideoMAE's default).
The video ViT comes from the `model` section (`kind: video_vit`). See docs/methods/videomae.md."""

from __future__ import annotations

from dataclasses import dataclass, field

from ssl_distill.modules.decoder import DecoderConfig
from ssl_distill.objectives.base import MaskedModelingConfig, MaskedModelingObjective
from ssl_distill.registry import OBJECTIVES
from ssl_distill.schema import ranged


@dataclass
class VideoMAEConfig(MaskedModelingConfig):
    name: str = "videomae"
    mask_ratio: float = ranged(0.9, "[0, 1)")
    decoder: DecoderConfig = field(default_factory=lambda: DecoderConfig(dim=384, depth=4, heads=6))


@OBJECTIVES.register("videomae")
class VideoMAE(MaskedModelingObjective):
    """batch['video']: (B, C, T, H, W) -> mean squared error on the hidden tubelets."""

    Config = VideoMAEConfig
    requires = frozenset({"video"})
    model_kinds = frozenset({"video_vit"})
    default_model = {"kind": "video_vit"}
