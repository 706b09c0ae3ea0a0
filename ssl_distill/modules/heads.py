"""Projection heads (lightly's) with their config sections."""

from __future__ import annotations

from dataclasses import dataclass

from lightly.models.modules import DINOProjectionHead

from ssl_distill.schema import ranged


@dataclass
class DINOHeadConfig:
    """DINO's head: MLP in -> hidden -> hidden -> bottleneck, L2 norm, weight-normed linear to output_dim."""

    hidden_dim: int = ranged(2048, "[1, inf)")
    bottleneck_dim: int = ranged(256, "[1, inf)")
    output_dim: int = ranged(65536, "[1, inf)")
    batch_norm: bool = False
    norm_last_layer: bool = True


def dino_head(in_dim: int, cfg: DINOHeadConfig) -> DINOProjectionHead:
    return DINOProjectionHead(
        in_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.output_dim,
        batch_norm=cfg.batch_norm, norm_last_layer=cfg.norm_last_layer,
    )
