"""Projection heads (lightly's) with their config sections."""

from __future__ import annotations

from dataclasses import dataclass

from lightly.models.modules import DINOProjectionHead
from lightly.models.modules.heads import ProjectionHead
from torch import nn


@dataclass
class DINOHeadConfig:
    """DINO's head: MLP in -> hidden -> hidden -> bottleneck, L2 norm, weight-normed linear to output_dim."""

    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    output_dim: int = 65536
    batch_norm: bool = False
    norm_last_layer: bool = True


def dino_head(in_dim: int, cfg: DINOHeadConfig) -> DINOProjectionHead:
    return DINOProjectionHead(
        in_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.output_dim,
        batch_norm=cfg.batch_norm, norm_last_layer=cfg.norm_last_layer,
    )


def patch_projection(in_dim: int, hidden_dim: int, out_dim: int) -> ProjectionHead:
    """Per-token MLP in -> hidden -> hidden -> out with GELU, no norm (Leopart's projection head,
    Ziegler & Asano, CVPR 2022, `experiments/leopart/model.py`); works on (..., in_dim) tokens."""
    return ProjectionHead([
        (in_dim, hidden_dim, None, nn.GELU()),
        (hidden_dim, hidden_dim, None, nn.GELU()),
        (hidden_dim, out_dim, None, None),
    ])
